//! Uninstall cleanup (`palisade-uninstall`, the Helm chart's pre-delete hook): removes
//! Palisade's chains, hooks and sets from every node.
//!
//! The enforcer keeps its rules when it stops (a restart or an upgrade must never open a
//! node), so uninstall is the one place that removes them, in this order:
//! 1. read the enforcer DaemonSet's pod template (image, tolerations, mounts, capabilities);
//! 2. save that template and the nodes to clean in the ConfigMap `<daemonset>-uninstall-plan`
//!    (the plan), then delete the DaemonSet and wait until its pods are gone, so no agent
//!    puts rules back;
//! 3. run one pod per node from that template, pinned to the node, running
//!    `palisade-enforcer cleanup`, and wait for each to finish;
//! 4. delete those pods and report every node that could not be cleaned (it keeps its rules
//!    until someone runs `palisade-enforcer cleanup` there); failed pods stay for their logs;
//! 5. narrow the plan to the nodes not cleaned, or delete it when there are none.
//!
//! A retry (`helm uninstall` again after a failure) finds the DaemonSet gone and runs the
//! saved plan: whatever the earlier attempt left (no cleanup pod at all when it stopped
//! while the enforcers were going, or when the API refused a pod), a failure never turns
//! into a silent success. An earlier attempt's pod is deleted only once its node's new pod
//! exists.
//!
//! [`remove_leftovers`] is the post-delete step: once Helm has deleted the operator and its
//! pods are gone, it deletes what the operator made at run time (its certificate Secret, the
//! leader Lease); before that, a running leader would only make them again.
//!
//! Its API calls are the `UNINSTALL` table of [`crate::rbac`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, PodSpec, Secret};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::Api;
use serde::Serialize;
use tracing::{info, warn};

/// Label of the cleanup pods (value: the DaemonSet's name).
pub const CLEANUP_LABEL: &str = "palisade.dev/cleanup";

#[derive(Clone, Debug)]
pub struct UninstallSettings {
    pub namespace: String,
    /// The enforcer DaemonSet.
    pub daemonset: String,
    /// Longest wait for the enforcers to stop, and again for the cleanups to finish.
    pub timeout: Duration,
    /// How often pods are looked at while waiting.
    pub poll: Duration,
    /// What the operator created at run time, which Helm does not know to delete: the
    /// stream's certificate Secret (when the operator issued it) and the leader Lease
    /// ([`remove_leftovers`], the post-delete step).
    pub tls_secret: Option<String>,
    pub lease: Option<String>,
    /// Label selector of the operator's pods: the leftovers are deleted once they are gone
    /// (a running leader would renew its Lease, or re-issue its certificate).
    pub operator_selector: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("DaemonSet {0} has no pod template to clean up with")]
    NoTemplate(String),
    #[error("the pods of DaemonSet {daemonset} were still running after {seconds} s")]
    EnforcersRemain { daemonset: String, seconds: u64 },
    #[error("ConfigMap {name} (the uninstall plan of an earlier attempt) is unreadable: {reason}; delete it and clean the nodes by hand (README, \"Uninstall\")")]
    BadPlan { name: String, reason: String },
    #[error("the operator's pods ({selector}) were still running after {seconds} s")]
    OperatorsRemain { selector: String, seconds: u64 },
}

/// What happened on each node.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Nodes whose cleanup succeeded.
    pub cleaned: Vec<String>,
    /// Nodes that may still hold Palisade's rules, with the reason.
    pub failed: BTreeMap<String, String>,
    /// Whether the DaemonSet existed at all.
    pub found: bool,
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> UninstallError {
    let what = what.into();
    move |source| UninstallError::Api { what, source }
}

/// Whether a node's labels satisfy the pod template's `nodeSelector` (the kubelet refuses a
/// pinned pod otherwise, and the DaemonSet never ran there).
fn selected(node: &Node, spec: &PodSpec) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    spec.node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// The cleanup pod for `node`: the enforcer's pod, pinned, running `cleanup` once. Its
/// name is generated (`<daemonset>-cleanup-xxxxx`), so a retry never collides with the pods
/// of an earlier attempt.
pub fn cleanup_pod(settings: &UninstallSettings, template: &PodSpec, node: &str) -> Pod {
    let mut spec = template.clone();
    spec.node_name = Some(node.to_string());
    spec.restart_policy = Some("Never".to_string());
    spec.affinity = None;
    spec.init_containers = None;
    spec.containers.truncate(1);
    for c in &mut spec.containers {
        c.command = None;
        c.args = Some(vec!["cleanup".to_string()]);
        c.liveness_probe = None;
        c.readiness_probe = None;
        c.startup_probe = None;
        c.lifecycle = None;
        c.ports = None;
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-cleanup-", settings.daemonset)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(BTreeMap::from([(
                CLEANUP_LABEL.to_string(),
                settings.daemonset.clone(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        ..Pod::default()
    }
}

/// What to clean with, and where.
struct Plan {
    template: PodSpec,
    /// Nodes to clean, sorted.
    nodes: Vec<String>,
    /// Label selector of the enforcer pods to wait for (None: the DaemonSet is gone already).
    enforcers: Option<String>,
}

/// Name of the ConfigMap that holds the plan (`<daemonset>-uninstall-plan`).
pub fn plan_name(settings: &UninstallSettings) -> String {
    format!("{}-uninstall-plan", settings.daemonset)
}

/// The plan's copy in the release namespace. It is written before the DaemonSet is
/// deleted and removed only once every node is clean, so whatever an attempt leaves behind
/// (no cleanup pod at all, when it stopped while the enforcers were going or a pod could
/// not be created), a retry still knows the template and the nodes left.
struct PlanStore {
    api: Api<ConfigMap>,
    name: String,
    namespace: String,
    daemonset: String,
    /// Whether the ConfigMap exists (update rather than create).
    exists: bool,
}

impl PlanStore {
    fn new(client: kube::Client, settings: &UninstallSettings) -> Self {
        PlanStore {
            api: Api::namespaced(client, &settings.namespace),
            name: plan_name(settings),
            namespace: settings.namespace.clone(),
            daemonset: settings.daemonset.clone(),
            exists: false,
        }
    }

    fn bad(&self, reason: impl Into<String>) -> UninstallError {
        UninstallError::BadPlan {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The stored template and nodes (None: no earlier attempt got as far as deleting the
    /// DaemonSet, or the last one finished).
    async fn load(&mut self) -> Result<Option<(PodSpec, Vec<String>)>, UninstallError> {
        let found = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(api_error(format!("reading ConfigMap {}", self.name)))?;
        let Some(map) = found else {
            return Ok(None);
        };
        self.exists = true;
        let data = map.data.unwrap_or_default();
        let field = |key: &str| {
            data.get(key)
                .ok_or_else(|| self.bad(format!("no `{key}` key")))
        };
        let template: PodSpec = serde_json::from_str(field("template")?)
            .map_err(|e| self.bad(format!("`template` is not a pod spec: {e}")))?;
        let nodes: Vec<String> = serde_json::from_str(field("nodes")?)
            .map_err(|e| self.bad(format!("`nodes` is not a list of names: {e}")))?;
        Ok(Some((template, nodes)))
    }

    async fn save(&mut self, template: &PodSpec, nodes: &[String]) -> Result<(), UninstallError> {
        let encode = |v: serde_json::Result<String>| v.map_err(|e| self.bad(e.to_string()));
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    CLEANUP_LABEL.to_string(),
                    self.daemonset.clone(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (
                    "template".to_string(),
                    encode(serde_json::to_string(template))?,
                ),
                ("nodes".to_string(), encode(serde_json::to_string(nodes))?),
            ])),
            ..ConfigMap::default()
        };
        let what = format!("saving the plan in ConfigMap {}", self.name);
        if self.exists {
            self.api
                .replace(&self.name, &PostParams::default(), &map)
                .await
                .map_err(api_error(what))?;
        } else {
            self.api
                .create(&PostParams::default(), &map)
                .await
                .map_err(api_error(what))?;
            self.exists = true;
        }
        Ok(())
    }

    /// Every node is clean: nothing is left for a retry.
    async fn remove(&self) -> Result<(), UninstallError> {
        match self.api.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_error(format!("deleting ConfigMap {}", self.name))(e)),
        }
    }
}

/// The nodes that exist now.
async fn list_nodes(nodes: &Api<Node>) -> Result<Vec<Node>, UninstallError> {
    Ok(nodes
        .list(&ListParams::default())
        .await
        .map_err(api_error("listing nodes"))?
        .items)
}

/// The plan from the DaemonSet (saved before anything is deleted), or, when it is gone (an
/// earlier attempt deleted it and did not finish), the saved one: a retry cleans the nodes
/// it left, less those that left the cluster.
async fn plan(
    settings: &UninstallSettings,
    daemonsets: &Api<DaemonSet>,
    nodes: &Api<Node>,
    store: &mut PlanStore,
) -> Result<Option<Plan>, UninstallError> {
    let stored = store.load().await?;
    let ds_name = &settings.daemonset;
    let found = daemonsets
        .get_opt(ds_name)
        .await
        .map_err(api_error(format!("reading DaemonSet {ds_name}")))?;
    let Some(ds) = found else {
        let Some((template, left)) = stored else {
            return Ok(None);
        };
        let existing = list_nodes(nodes).await?;
        let mut targets: Vec<String> = left
            .into_iter()
            .filter(|n| existing.iter().any(|e| e.metadata.name.as_ref() == Some(n)))
            .collect();
        targets.sort();
        targets.dedup();
        return Ok(Some(Plan {
            template,
            nodes: targets,
            enforcers: None,
        }));
    };
    let template = ds
        .spec
        .template
        .spec
        .ok_or_else(|| UninstallError::NoTemplate(ds_name.clone()))?;
    let selector = ds
        .spec
        .selector
        .match_labels
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut targets: Vec<String> = list_nodes(nodes)
        .await?
        .iter()
        .filter(|n| selected(n, &template))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    targets.sort();
    // Saved before the DaemonSet goes: from then on the plan is the only copy.
    store.save(&template, &targets).await?;
    Ok(Some(Plan {
        template,
        nodes: targets,
        enforcers: Some(selector),
    }))
}

/// Deletes the DaemonSet and waits until its pods are gone.
async fn stop_enforcers(
    settings: &UninstallSettings,
    daemonsets: &Api<DaemonSet>,
    pods: &Api<Pod>,
    selector: &str,
) -> Result<(), UninstallError> {
    let ds_name = &settings.daemonset;
    info!(daemonset = %ds_name, "stopping the enforcers");
    match daemonsets
        .delete(ds_name, &DeleteParams::foreground())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(api_error(format!("deleting DaemonSet {ds_name}"))(e)),
    }
    let enforcers = ListParams::default().labels(selector);
    let deadline = tokio::time::Instant::now() + settings.timeout;
    loop {
        let left = pods
            .list(&enforcers)
            .await
            .map_err(api_error("listing the enforcer pods"))?
            .items
            .len();
        if left == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(UninstallError::EnforcersRemain {
                daemonset: ds_name.clone(),
                seconds: settings.timeout.as_secs(),
            });
        }
        tokio::time::sleep(settings.poll).await;
    }
}

fn cleanups(settings: &UninstallSettings) -> ListParams {
    ListParams::default().labels(&format!("{CLEANUP_LABEL}={}", settings.daemonset))
}

/// The cleanup pods of earlier attempts (failed or unfinished ones, kept for their logs):
/// (pod, node).
async fn earlier_pods(
    settings: &UninstallSettings,
    pods: &Api<Pod>,
) -> Result<Vec<(String, Option<String>)>, UninstallError> {
    Ok(pods
        .list(&cleanups(settings))
        .await
        .map_err(api_error("listing earlier cleanup pods"))?
        .items
        .into_iter()
        .filter_map(|p| {
            let node = p.spec.and_then(|s| s.node_name);
            Some((p.metadata.name?, node))
        })
        .collect())
}

/// Creates one cleanup pod per node; returns pod name -> node. A node whose pod cannot be
/// created goes to `report.failed`.
async fn start_cleanups(
    settings: &UninstallSettings,
    pods: &Api<Pod>,
    plan: &Plan,
    report: &mut Report,
) -> BTreeMap<String, String> {
    let mut started = BTreeMap::new();
    for node in &plan.nodes {
        let pod = cleanup_pod(settings, &plan.template, node);
        match pods.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                let name = created.metadata.name.unwrap_or_default();
                started.insert(name, node.clone());
            }
            Err(e) => {
                report
                    .failed
                    .insert(node.clone(), format!("cannot create its cleanup pod: {e}"));
            }
        }
    }
    started
}

/// Waits for the started cleanup pods; returns those that failed or did not finish (kept
/// for their logs).
async fn wait_cleanups(
    settings: &UninstallSettings,
    pods: &Api<Pod>,
    mut waiting: BTreeMap<String, String>,
    report: &mut Report,
) -> Result<BTreeSet<String>, UninstallError> {
    let mut kept = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + settings.timeout;
    while !waiting.is_empty() {
        let listed = pods
            .list(&cleanups(settings))
            .await
            .map_err(api_error("listing the cleanup pods"))?;
        for pod in listed.items {
            let (Some(name), Some(phase)) = (
                pod.metadata.name.as_ref(),
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            ) else {
                continue;
            };
            let Some(node) = waiting.get(name).cloned() else {
                continue;
            };
            match phase {
                "Succeeded" => {
                    report.cleaned.push(node);
                    waiting.remove(name);
                }
                "Failed" => {
                    report
                        .failed
                        .insert(node, format!("{name} failed (kubectl logs {name})"));
                    kept.insert(name.clone());
                    waiting.remove(name);
                }
                _ => {}
            }
        }
        if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(settings.poll).await;
    }
    for (name, node) in &waiting {
        kept.insert(name.clone());
        report.failed.insert(
            node.clone(),
            format!(
                "{name} did not finish within {} s",
                settings.timeout.as_secs()
            ),
        );
    }
    report.cleaned.sort();
    Ok(kept)
}

/// Runs the whole cleanup (see the module documentation).
pub async fn run(
    client: kube::Client,
    settings: &UninstallSettings,
) -> Result<Report, UninstallError> {
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &settings.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &settings.namespace);
    let nodes: Api<Node> = Api::all(client.clone());
    let mut store = PlanStore::new(client, settings);
    let Some(plan) = plan(settings, &daemonsets, &nodes, &mut store).await? else {
        warn!(daemonset = %settings.daemonset,
            "no enforcer DaemonSet and no unfinished earlier cleanup: nothing to clean");
        return Ok(Report::default());
    };
    if let Some(selector) = &plan.enforcers {
        stop_enforcers(settings, &daemonsets, &pods, selector).await?;
    }
    let earlier = earlier_pods(settings, &pods).await?;
    let mut report = Report {
        found: true,
        ..Report::default()
    };
    let started = start_cleanups(settings, &pods, &plan, &mut report).await;
    // An earlier pod goes only once its node has a new one: until then it is the only
    // record of that node's failure (and its logs).
    for (name, node) in &earlier {
        if node
            .as_ref()
            .is_some_and(|n| started.values().any(|s| s == n))
        {
            delete_pod(&pods, name).await;
        }
    }
    let mut created: Vec<String> = started.keys().cloned().collect();
    let kept = wait_cleanups(settings, &pods, started, &mut report).await?;
    created.retain(|name| !kept.contains(name));
    for name in &created {
        delete_pod(&pods, name).await;
    }
    if report.failed.is_empty() {
        store.remove().await?;
    } else {
        let left: Vec<String> = report.failed.keys().cloned().collect();
        // The stored plan already names these nodes (and maybe more): a failed save only
        // makes a retry clean more nodes than needed, so the report still goes out.
        if let Err(e) = store.save(&plan.template, &left).await {
            warn!(error = %e, "cannot narrow the saved plan to the nodes left");
        }
    }
    Ok(report)
}

async fn delete_pod(pods: &Api<Pod>, name: &str) {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => warn!(pod = %name, error = %e, "cannot delete a cleanup pod"),
    }
}

/// The post-delete step: waits until the operator's pods are gone, then deletes its run-time
/// objects (absent ones are fine; a failed delete is logged, the uninstall goes on).
pub async fn remove_leftovers(
    client: &kube::Client,
    settings: &UninstallSettings,
) -> Result<(), UninstallError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &settings.namespace);
    let operators = ListParams::default().labels(&settings.operator_selector);
    let deadline = tokio::time::Instant::now() + settings.timeout;
    loop {
        let left = pods
            .list(&operators)
            .await
            .map_err(api_error("listing the operator pods"))?
            .items
            .len();
        if left == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(UninstallError::OperatorsRemain {
                selector: settings.operator_selector.clone(),
                seconds: settings.timeout.as_secs(),
            });
        }
        tokio::time::sleep(settings.poll).await;
    }
    if let Some(name) = &settings.tls_secret {
        let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
        log_delete(
            "Secret",
            name,
            api.delete(name, &DeleteParams::default()).await.map(|_| ()),
        );
    }
    if let Some(name) = &settings.lease {
        let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
        log_delete(
            "Lease",
            name,
            api.delete(name, &DeleteParams::default()).await.map(|_| ()),
        );
    }
    Ok(())
}

fn log_delete(kind: &str, name: &str, result: Result<(), kube::Error>) {
    match result {
        Ok(()) => info!(kind, name, "deleted"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => warn!(kind, name, error = %e, "cannot delete"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac;
    use crate::verifier;
    use serde_json::json;

    fn settings() -> UninstallSettings {
        UninstallSettings {
            namespace: "palisade-system".into(),
            daemonset: "palisade-enforcer".into(),
            timeout: Duration::from_millis(300),
            poll: Duration::from_millis(5),
            tls_secret: Some("palisade-stream-tls".into()),
            lease: Some("palisade-operator".into()),
            operator_selector: "app.kubernetes.io/component=operator".into(),
        }
    }

    fn daemonset() -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "palisade-enforcer", "namespace": "palisade-system"},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/component": "enforcer"}},
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/component": "enforcer"}},
                    "spec": {
                        "hostNetwork": true,
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{
                            "name": "enforcer", "image": "palisade-enforcer:1",
                            "args": ["agent", "--node=$(NODE_NAME)"],
                            "readinessProbe": {"exec": {"command": ["true"]}},
                            "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
                            "volumeMounts": [{"name": "xtables-lock", "mountPath": "/run/xtables.lock"}]
                        }],
                        "volumes": [{"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock"}}]
                    }
                }
            }
        })
    }

    fn node(name: &str, os: &str) -> serde_json::Value {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/os": os}}})
    }

    fn list(kind: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": items})
    }

    fn pod(name: &str, phase: &str) -> serde_json::Value {
        json!({"metadata": {"name": name}, "status": {"phase": phase}})
    }

    /// Answers a cleanup pod's creation as the API server does (a generated name).
    async fn created(v: &mut verifier::ApiServerVerifier, name: &str) -> serde_json::Value {
        let (mut body, send) = v
            .expect("POST", "/api/v1/namespaces/palisade-system/pods?")
            .await;
        assert_eq!(
            body["metadata"]["generateName"],
            "palisade-enforcer-cleanup-"
        );
        body["metadata"]["name"] = name.into();
        send.ok(&body);
        body
    }

    /// The wait finds the cleanup pod `name` succeeded; it is then removed.
    async fn succeeded_and_removed(v: &mut verifier::ApiServerVerifier, name: &str) {
        let (_, send) = v.expect("GET", CLEANUPS).await;
        send.ok(&list("PodList", vec![pod(name, "Succeeded")]));
        let (_, send) = v.expect("DELETE", &format!("{PODS}/{name}?")).await;
        send.ok(&pod(name, "Succeeded"));
    }

    async fn leftovers_deleted(v: &mut verifier::ApiServerVerifier) {
        let (_, send) = v
            .expect(
                "DELETE",
                "/api/v1/namespaces/palisade-system/secrets/palisade-stream-tls?",
            )
            .await;
        send.status(404, "NotFound");
        let (_, send) = v
            .expect(
                "DELETE",
                "/apis/coordination.k8s.io/v1/namespaces/palisade-system/leases/palisade-operator?",
            )
            .await;
        send.ok(
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
        );
    }

    const PODS: &str = "/api/v1/namespaces/palisade-system/pods";
    const DS: &str = "/apis/apps/v1/namespaces/palisade-system/daemonsets/palisade-enforcer";
    const CLEANUPS: &str =
        "/api/v1/namespaces/palisade-system/pods?&labelSelector=palisade.dev%2Fcleanup%3Dpalisade-enforcer";

    const PLAN: &str =
        "/api/v1/namespaces/palisade-system/configmaps/palisade-enforcer-uninstall-plan";
    const PLANS: &str = "/api/v1/namespaces/palisade-system/configmaps?";
    const ENFORCERS: &str =
        "/api/v1/namespaces/palisade-system/pods?&labelSelector=app.kubernetes.io%2Fcomponent%3Denforcer";

    /// The plan ConfigMap as an earlier attempt left it.
    fn stored_plan(nodes: &[&str]) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "palisade-enforcer-uninstall-plan", "namespace": "palisade-system"},
            "data": {
                "template": daemonset()["spec"]["template"]["spec"].to_string(),
                "nodes": json!(nodes).to_string(),
            }
        })
    }

    /// The nodes a saved plan names.
    fn plan_nodes(body: &serde_json::Value) -> serde_json::Value {
        let text = body["data"]["nodes"].as_str().expect("nodes is a string");
        serde_json::from_str(text).expect("nodes is JSON")
    }

    fn cleanup_on(name: &str, node: &str, phase: &str) -> serde_json::Value {
        let mut p = pod(name, phase);
        p["spec"] = json!({"nodeName": node, "containers": [{"name": "enforcer"}]});
        p
    }

    /// A first attempt up to the DaemonSet's delete: no plan yet, the DaemonSet found, the
    /// plan saved before the delete. Returns the saved ConfigMap.
    async fn first_attempt_start(
        v: &mut verifier::ApiServerVerifier,
        nodes: Vec<serde_json::Value>,
    ) -> serde_json::Value {
        let (_, send) = v.expect("GET", PLAN).await;
        send.status(404, "NotFound");
        let (_, send) = v.expect("GET", DS).await;
        send.ok(&daemonset());
        let (_, send) = v.expect("GET", "/api/v1/nodes?").await;
        send.ok(&list("NodeList", nodes));
        let (saved, send) = v.expect("POST", PLANS).await;
        send.ok(&saved);
        let (body, send) = v.expect("DELETE", &format!("{DS}?")).await;
        assert_eq!(body["propagationPolicy"], "Foreground");
        send.ok(&daemonset());
        saved
    }

    /// A retry's start: the DaemonSet is gone, the plan is `saved`.
    async fn retry_start(
        v: &mut verifier::ApiServerVerifier,
        saved: serde_json::Value,
        nodes: Vec<serde_json::Value>,
        earlier: Vec<serde_json::Value>,
    ) {
        let (_, send) = v.expect("GET", PLAN).await;
        send.ok(&saved);
        let (_, send) = v.expect("GET", DS).await;
        send.status(404, "NotFound");
        let (_, send) = v.expect("GET", "/api/v1/nodes?").await;
        send.ok(&list("NodeList", nodes));
        let (_, send) = v.expect("GET", CLEANUPS).await;
        send.ok(&list("PodList", earlier));
    }

    #[tokio::test]
    async fn stops_the_enforcers_then_cleans_every_linux_node() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            let saved = first_attempt_start(
                &mut v,
                vec![node("b", "linux"), node("a", "linux"), node("w", "windows")],
            )
            .await;
            let (_, send) = v.expect("GET", ENFORCERS).await;
            send.ok(&list(
                "PodList",
                vec![pod("palisade-enforcer-x", "Running")],
            ));
            let (_, send) = v.expect("GET", ENFORCERS).await;
            send.ok(&list("PodList", vec![]));
            let (_, send) = v.expect("GET", CLEANUPS).await;
            send.ok(&list("PodList", vec![]));
            let created = vec![
                created(&mut v, "palisade-enforcer-cleanup-aaaaa").await,
                created(&mut v, "palisade-enforcer-cleanup-bbbbb").await,
            ];
            let (_, send) = v.expect("GET", CLEANUPS).await;
            send.ok(&list(
                "PodList",
                vec![
                    pod("palisade-enforcer-cleanup-aaaaa", "Succeeded"),
                    pod("palisade-enforcer-cleanup-bbbbb", "Pending"),
                ],
            ));
            let (_, send) = v.expect("GET", CLEANUPS).await;
            send.ok(&list(
                "PodList",
                vec![pod("palisade-enforcer-cleanup-bbbbb", "Failed")],
            ));
            // Only the successful cleanup pod is deleted: the failed one keeps its logs.
            let (_, send) = v
                .expect(
                    "DELETE",
                    &format!("{PODS}/palisade-enforcer-cleanup-aaaaa?"),
                )
                .await;
            send.ok(&pod("palisade-enforcer-cleanup-aaaaa", "Succeeded"));
            // The plan keeps the node left for a retry.
            let (narrowed, send) = v.expect("PUT", &format!("{PLAN}?")).await;
            send.ok(&narrowed);
            (created, saved, narrowed)
        });
        let report = run(client, &settings()).await.expect("ran");
        let (created, saved, narrowed) = server.await.expect("verifier");
        rbac::check_against(rbac::OPERATOR);
        assert_eq!(report.cleaned, vec!["a".to_string()]);
        assert_eq!(report.failed.keys().collect::<Vec<_>>(), vec!["b"]);
        assert!(report.failed["b"].contains("palisade-enforcer-cleanup-bbbbb failed"));
        assert!(report.found);
        assert_eq!(plan_nodes(&saved), json!(["a", "b"]));
        assert_eq!(
            saved["metadata"]["labels"][CLEANUP_LABEL],
            "palisade-enforcer"
        );
        let template: serde_json::Value =
            serde_json::from_str(saved["data"]["template"].as_str().expect("template"))
                .expect("template JSON");
        assert_eq!(
            template["containers"][0]["image"], "palisade-enforcer:1",
            "the plan holds the enforcer's own template"
        );
        assert_eq!(plan_nodes(&narrowed), json!(["b"]));
        let first = &created[0];
        assert_eq!(first["spec"]["nodeName"], "a");
        assert_eq!(first["spec"]["restartPolicy"], "Never");
        assert_eq!(first["spec"]["hostNetwork"], true);
        assert_eq!(
            first["spec"]["tolerations"],
            json!([{"operator": "Exists"}])
        );
        let c = &first["spec"]["containers"][0];
        assert_eq!(c["args"], json!(["cleanup"]));
        assert_eq!(c["image"], "palisade-enforcer:1");
        assert!(c.get("readinessProbe").is_none());
        assert_eq!(
            c["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/run/xtables.lock");
        assert_eq!(created[1]["spec"]["nodeName"], "b");
    }

    #[tokio::test]
    async fn a_retry_cleans_the_nodes_an_earlier_attempt_failed_on() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            // The DaemonSet went with the first attempt; the plan names what is left.
            let earlier = cleanup_on("palisade-enforcer-cleanup-bbbbb", "b", "Failed");
            retry_start(
                &mut v,
                stored_plan(&["b"]),
                vec![node("b", "linux")],
                vec![earlier],
            )
            .await;
            let body = created(&mut v, "palisade-enforcer-cleanup-ccccc").await;
            // The earlier pod goes once its replacement exists.
            let (_, send) = v
                .expect(
                    "DELETE",
                    &format!("{PODS}/palisade-enforcer-cleanup-bbbbb?"),
                )
                .await;
            send.ok(&pod("palisade-enforcer-cleanup-bbbbb", "Failed"));
            succeeded_and_removed(&mut v, "palisade-enforcer-cleanup-ccccc").await;
            // Every node is clean: the plan goes.
            let (_, send) = v.expect("DELETE", &format!("{PLAN}?")).await;
            send.ok(&stored_plan(&["b"]));
            body
        });
        let report = run(client, &settings()).await.expect("ran");
        let body = server.await.expect("verifier");
        rbac::check_against(rbac::OPERATOR);
        assert_eq!(report.cleaned, vec!["b".to_string()]);
        assert!(report.failed.is_empty());
        assert!(report.found);
        assert_eq!(body["spec"]["nodeName"], "b");
        assert_eq!(body["spec"]["containers"][0]["args"], json!(["cleanup"]));
        assert_eq!(
            body["spec"]["containers"][0]["image"],
            "palisade-enforcer:1"
        );
    }

    #[tokio::test]
    async fn enforcers_that_do_not_stop_fail_the_uninstall_and_a_retry_cleans_every_node() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let (saved_tx, saved_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let saved = first_attempt_start(&mut v, vec![node("a", "linux")]).await;
            let _ = saved_tx.send(saved);
            // Listed until the timeout; never a POST.
            loop {
                let (request, send) = v.next().await;
                assert_eq!(
                    request.method().as_str(),
                    "GET",
                    "no cleanup while enforcers run"
                );
                send.ok(&list(
                    "PodList",
                    vec![pod("palisade-enforcer-x", "Running")],
                ));
            }
        });
        let result = run(client, &settings()).await;
        server.abort();
        assert!(
            matches!(result, Err(UninstallError::EnforcersRemain { .. })),
            "{result:?}"
        );
        let saved = saved_rx.await.expect("the plan was saved");
        assert_eq!(plan_nodes(&saved), json!(["a"]));
        // The foreground delete finished later: no DaemonSet, no cleanup pod, only the
        // plan. The retry must still clean node a (and skip z, which left the cluster).
        let mut saved = saved;
        saved["data"]["nodes"] = json!(["a", "z"]).to_string().into();
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            retry_start(&mut v, saved, vec![node("a", "linux")], vec![]).await;
            let body = created(&mut v, "palisade-enforcer-cleanup-aaaaa").await;
            succeeded_and_removed(&mut v, "palisade-enforcer-cleanup-aaaaa").await;
            let (_, send) = v.expect("DELETE", &format!("{PLAN}?")).await;
            send.ok(&stored_plan(&[]));
            body
        });
        let report = run(client, &settings()).await.expect("retried");
        let body = server.await.expect("verifier");
        rbac::check_against(rbac::OPERATOR);
        assert_eq!(report.cleaned, vec!["a".to_string()]);
        assert!(report.failed.is_empty());
        assert!(report.found, "a retry with a plan is not 'nothing found'");
        assert_eq!(body["spec"]["nodeName"], "a");
    }

    #[tokio::test]
    async fn a_refused_cleanup_pod_keeps_its_node_in_the_plan_for_the_retry() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            first_attempt_start(&mut v, vec![node("a", "linux"), node("b", "linux")]).await;
            let (_, send) = v.expect("GET", ENFORCERS).await;
            send.ok(&list("PodList", vec![]));
            let (_, send) = v.expect("GET", CLEANUPS).await;
            send.ok(&list("PodList", vec![]));
            // PodSecurity (or a quota) refuses node a's pod: no pod records that failure.
            let (_, send) = v.expect("POST", &format!("{PODS}?")).await;
            send.status(403, "Forbidden");
            created(&mut v, "palisade-enforcer-cleanup-bbbbb").await;
            succeeded_and_removed(&mut v, "palisade-enforcer-cleanup-bbbbb").await;
            let (narrowed, send) = v.expect("PUT", &format!("{PLAN}?")).await;
            send.ok(&narrowed);
            narrowed
        });
        let report = run(client, &settings()).await.expect("ran");
        let narrowed = server.await.expect("verifier");
        assert_eq!(report.cleaned, vec!["b".to_string()]);
        assert!(report.failed["a"].contains("cannot create its cleanup pod"));
        assert_eq!(plan_nodes(&narrowed), json!(["a"]));
        // The retry creates node a's pod from the plan.
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            retry_start(
                &mut v,
                narrowed,
                vec![node("a", "linux"), node("b", "linux")],
                vec![],
            )
            .await;
            let body = created(&mut v, "palisade-enforcer-cleanup-ccccc").await;
            succeeded_and_removed(&mut v, "palisade-enforcer-cleanup-ccccc").await;
            let (_, send) = v.expect("DELETE", &format!("{PLAN}?")).await;
            send.ok(&stored_plan(&[]));
            body
        });
        let report = run(client, &settings()).await.expect("retried");
        let body = server.await.expect("verifier");
        rbac::check_against(rbac::OPERATOR);
        assert_eq!(report.cleaned, vec!["a".to_string()]);
        assert!(report.failed.is_empty());
        assert_eq!(body["spec"]["nodeName"], "a");
    }

    #[tokio::test]
    async fn an_earlier_pod_stays_when_its_replacement_cannot_be_created() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            let earlier = cleanup_on("palisade-enforcer-cleanup-bbbbb", "b", "Failed");
            retry_start(
                &mut v,
                stored_plan(&["b"]),
                vec![node("b", "linux")],
                vec![earlier],
            )
            .await;
            let (_, send) = v.expect("POST", &format!("{PODS}?")).await;
            send.status(403, "Forbidden");
            // No DELETE of the earlier pod: next comes the plan, still naming b.
            let (narrowed, send) = v.expect("PUT", &format!("{PLAN}?")).await;
            send.ok(&narrowed);
            narrowed
        });
        let report = run(client, &settings()).await.expect("ran");
        let narrowed = server.await.expect("verifier");
        rbac::check_against(rbac::OPERATOR);
        assert!(report.cleaned.is_empty());
        assert!(report.failed["b"].contains("cannot create its cleanup pod"));
        assert_eq!(plan_nodes(&narrowed), json!(["b"]));
    }

    #[tokio::test]
    async fn a_retry_that_still_finds_the_daemonset_replaces_the_saved_plan() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            // The first attempt saved its plan, then gave up while the DaemonSet was still
            // being deleted: the plan is rewritten from the DaemonSet (PUT, not POST).
            let (_, send) = v.expect("GET", PLAN).await;
            send.ok(&stored_plan(&["b"]));
            let (_, send) = v.expect("GET", DS).await;
            send.ok(&daemonset());
            let (_, send) = v.expect("GET", "/api/v1/nodes?").await;
            send.ok(&list("NodeList", vec![node("a", "linux")]));
            let (saved, send) = v.expect("PUT", &format!("{PLAN}?")).await;
            send.ok(&saved);
            let (_, send) = v.expect("DELETE", &format!("{DS}?")).await;
            send.status(404, "NotFound");
            let (_, send) = v.expect("GET", ENFORCERS).await;
            send.ok(&list("PodList", vec![]));
            let (_, send) = v.expect("GET", CLEANUPS).await;
            send.ok(&list("PodList", vec![]));
            created(&mut v, "palisade-enforcer-cleanup-aaaaa").await;
            succeeded_and_removed(&mut v, "palisade-enforcer-cleanup-aaaaa").await;
            let (_, send) = v.expect("DELETE", &format!("{PLAN}?")).await;
            send.ok(&stored_plan(&[]));
            saved
        });
        let report = run(client, &settings()).await.expect("ran");
        let saved = server.await.expect("verifier");
        rbac::check_against(rbac::OPERATOR);
        assert_eq!(plan_nodes(&saved), json!(["a"]));
        assert_eq!(report.cleaned, vec!["a".to_string()]);
        assert!(report.failed.is_empty());
    }

    #[tokio::test]
    async fn no_daemonset_and_no_plan_means_nothing_to_do() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            let (_, send) = v.expect("GET", PLAN).await;
            send.status(404, "NotFound");
            let (_, send) = v.expect("GET", DS).await;
            send.status(404, "NotFound");
        });
        let report = run(client, &settings()).await.expect("ran");
        server.await.expect("verifier");
        rbac::check_against(rbac::OPERATOR);
        assert_eq!(report, Report::default());
    }

    #[tokio::test]
    async fn an_unreadable_plan_is_an_error_naming_it() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            let mut bad = stored_plan(&["a"]);
            bad["data"]["template"] = "not json".into();
            let (_, send) = v.expect("GET", PLAN).await;
            send.ok(&bad);
        });
        let result = run(client, &settings()).await;
        server.await.expect("verifier");
        rbac::check_against(rbac::OPERATOR);
        let Err(e @ UninstallError::BadPlan { .. }) = result else {
            panic!("{result:?}");
        };
        let text = e.to_string();
        assert!(
            text.contains("palisade-enforcer-uninstall-plan") && text.contains("template"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn leftovers_go_once_the_operator_has_stopped() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            let operators =
                format!("{PODS}?&labelSelector=app.kubernetes.io%2Fcomponent%3Doperator");
            let (_, send) = v.expect("GET", &operators).await;
            send.ok(&list(
                "PodList",
                vec![pod("palisade-operator-x", "Running")],
            ));
            let (_, send) = v.expect("GET", &operators).await;
            send.ok(&list("PodList", vec![]));
            leftovers_deleted(&mut v).await;
        });
        remove_leftovers(&client, &settings())
            .await
            .expect("removed");
        server.await.expect("verifier");
        // An operator that does not stop: nothing is deleted under it.
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            loop {
                let (request, send) = v.next().await;
                assert_eq!(request.method().as_str(), "GET", "no delete while it runs");
                send.ok(&list(
                    "PodList",
                    vec![pod("palisade-operator-x", "Running")],
                ));
            }
        });
        let result = remove_leftovers(&client, &settings()).await;
        server.abort();
        rbac::check_against(rbac::OPERATOR);
        assert!(
            matches!(result, Err(UninstallError::OperatorsRemain { .. })),
            "{result:?}"
        );
    }
}
