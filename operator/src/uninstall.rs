//! Uninstall cleanup (`palisade-uninstall`, the Helm chart's pre-delete hook): removes
//! Palisade's chains, hooks and sets from every node.
//!
//! The enforcer keeps its rules when it stops (a restart or an upgrade must never open a
//! node), so uninstall is the one place that removes them, in this order:
//! 1. read the enforcer DaemonSet's pod template (image, tolerations, mounts, capabilities);
//! 2. delete the DaemonSet and wait until its pods are gone, so no agent puts rules back;
//! 3. run one pod per node from that template, pinned to the node, running
//!    `palisade-enforcer cleanup`, and wait for each to finish;
//! 4. delete those pods and report every node that could not be cleaned (it keeps its rules
//!    until someone runs `palisade-enforcer cleanup` there); failed pods stay for their logs.
//!
//! A retry (`helm uninstall` again after a failure) finds the DaemonSet gone and cleans the
//! nodes of the earlier attempt's pods again, from their own spec: a failure never turns into
//! a silent success.
//!
//! [`remove_leftovers`] is the post-delete step: once Helm has deleted the operator and its
//! pods are gone, it deletes what the operator made at run time (its certificate Secret, the
//! leader Lease); before that, a running leader would only make them again.
//!
//! Its API calls are the `UNINSTALL` table of [`crate::rbac`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Secret};
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
    /// Cleanup pods of an earlier attempt, replaced by this one.
    stale: Vec<String>,
}

/// The plan from the DaemonSet, or, when it is gone (an earlier attempt deleted it and
/// failed on some node), from that attempt's cleanup pods: a retry cleans their nodes again.
async fn plan(
    settings: &UninstallSettings,
    daemonsets: &Api<DaemonSet>,
    pods: &Api<Pod>,
    nodes: &Api<Node>,
) -> Result<Option<Plan>, UninstallError> {
    let ds_name = &settings.daemonset;
    let found = daemonsets
        .get_opt(ds_name)
        .await
        .map_err(api_error(format!("reading DaemonSet {ds_name}")))?;
    let Some(ds) = found else {
        let earlier = pods
            .list(&ListParams::default().labels(&format!("{CLEANUP_LABEL}={ds_name}")))
            .await
            .map_err(api_error("listing earlier cleanup pods"))?
            .items;
        let Some(template) = earlier.iter().find_map(|p| p.spec.clone()) else {
            return Ok(None);
        };
        let mut targets: Vec<String> = earlier
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        targets.sort();
        targets.dedup();
        return Ok(Some(Plan {
            template,
            nodes: targets,
            enforcers: None,
            stale: earlier
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect(),
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
    let mut targets: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .map_err(api_error("listing nodes"))?
        .items
        .iter()
        .filter(|n| selected(n, &template))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    targets.sort();
    Ok(Some(Plan {
        template,
        nodes: targets,
        enforcers: Some(selector),
        stale: Vec::new(),
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

/// Runs one cleanup pod per node and waits for them; returns the report and the pods
/// that may be deleted (the failed ones stay for their logs).
async fn clean_nodes(
    settings: &UninstallSettings,
    pods: &Api<Pod>,
    plan: &Plan,
) -> Result<(Report, Vec<String>), UninstallError> {
    let mut report = Report {
        found: true,
        ..Report::default()
    };
    let mut waiting: BTreeMap<String, String> = BTreeMap::new(); // pod name -> node
    let mut kept = std::collections::BTreeSet::new(); // failed pods, kept for their logs
    for node in &plan.nodes {
        let pod = cleanup_pod(settings, &plan.template, node);
        match pods.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                let name = created.metadata.name.unwrap_or_default();
                waiting.insert(name, node.clone());
            }
            Err(e) => {
                report
                    .failed
                    .insert(node.clone(), format!("cannot create its cleanup pod: {e}"));
            }
        }
    }
    let done: Vec<String> = waiting.keys().cloned().collect();
    let cleanups = ListParams::default().labels(&format!("{CLEANUP_LABEL}={}", settings.daemonset));
    let deadline = tokio::time::Instant::now() + settings.timeout;
    while !waiting.is_empty() {
        let listed = pods
            .list(&cleanups)
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
    let removable = done.into_iter().filter(|n| !kept.contains(n)).collect();
    Ok((report, removable))
}

/// Runs the whole cleanup (see the module documentation).
pub async fn run(
    client: kube::Client,
    settings: &UninstallSettings,
) -> Result<Report, UninstallError> {
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &settings.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &settings.namespace);
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(plan) = plan(settings, &daemonsets, &pods, &nodes).await? else {
        warn!(daemonset = %settings.daemonset,
            "no enforcer DaemonSet and no earlier cleanup: nothing to clean");
        return Ok(Report::default());
    };
    if let Some(selector) = &plan.enforcers {
        stop_enforcers(settings, &daemonsets, &pods, selector).await?;
    }
    for name in &plan.stale {
        delete_pod(&pods, name).await;
    }
    let (report, removable) = clean_nodes(settings, &pods, &plan).await?;
    for name in &removable {
        delete_pod(&pods, name).await;
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

    #[tokio::test]
    async fn stops_the_enforcers_then_cleans_every_linux_node() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            let (_, send) = v.expect("GET", DS).await;
            send.ok(&daemonset());
            let (_, send) = v.expect("GET", "/api/v1/nodes?").await;
            send.ok(&list(
                "NodeList",
                vec![node("b", "linux"), node("a", "linux"), node("w", "windows")],
            ));
            let (body, send) = v.expect("DELETE", &format!("{DS}?")).await;
            assert_eq!(body["propagationPolicy"], "Foreground");
            send.ok(&daemonset());
            let enforcers =
                format!("{PODS}?&labelSelector=app.kubernetes.io%2Fcomponent%3Denforcer");
            let (_, send) = v.expect("GET", &enforcers).await;
            send.ok(&list(
                "PodList",
                vec![pod("palisade-enforcer-x", "Running")],
            ));
            let (_, send) = v.expect("GET", &enforcers).await;
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
            created
        });
        let report = run(client, &settings()).await.expect("ran");
        let created = server.await.expect("verifier");
        rbac::check_against(rbac::OPERATOR);
        assert_eq!(report.cleaned, vec!["a".to_string()]);
        assert_eq!(report.failed.keys().collect::<Vec<_>>(), vec!["b"]);
        assert!(report.failed["b"].contains("palisade-enforcer-cleanup-bbbbb failed"));
        assert!(report.found);
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
            // The DaemonSet went with the first attempt; its failed pod tells what is left.
            let (_, send) = v.expect("GET", DS).await;
            send.status(404, "NotFound");
            let (_, send) = v.expect("GET", CLEANUPS).await;
            let mut earlier = pod("palisade-enforcer-cleanup-bbbbb", "Failed");
            earlier["spec"] = daemonset()["spec"]["template"]["spec"].clone();
            earlier["spec"]["nodeName"] = "b".into();
            earlier["spec"]["containers"][0]["args"] = json!(["cleanup"]);
            send.ok(&list("PodList", vec![earlier]));
            let (_, send) = v
                .expect(
                    "DELETE",
                    &format!("{PODS}/palisade-enforcer-cleanup-bbbbb?"),
                )
                .await;
            send.ok(&pod("palisade-enforcer-cleanup-bbbbb", "Failed"));
            let body = created(&mut v, "palisade-enforcer-cleanup-ccccc").await;
            let (_, send) = v.expect("GET", CLEANUPS).await;
            send.ok(&list(
                "PodList",
                vec![pod("palisade-enforcer-cleanup-ccccc", "Succeeded")],
            ));
            let (_, send) = v
                .expect(
                    "DELETE",
                    &format!("{PODS}/palisade-enforcer-cleanup-ccccc?"),
                )
                .await;
            send.ok(&pod("palisade-enforcer-cleanup-ccccc", "Succeeded"));
            body
        });
        let report = run(client, &settings()).await.expect("ran");
        let body = server.await.expect("verifier");
        rbac::check_against(rbac::OPERATOR);
        assert_eq!(report.cleaned, vec!["b".to_string()]);
        assert!(report.failed.is_empty());
        assert_eq!(body["spec"]["nodeName"], "b");
        assert_eq!(body["spec"]["containers"][0]["args"], json!(["cleanup"]));
    }

    #[tokio::test]
    async fn enforcers_that_do_not_stop_fail_the_uninstall_before_any_cleanup() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            let (_, send) = v
                .expect(
                    "GET",
                    "/apis/apps/v1/namespaces/palisade-system/daemonsets/palisade-enforcer",
                )
                .await;
            send.ok(&daemonset());
            let (_, send) = v.expect("GET", "/api/v1/nodes?").await;
            send.ok(&list("NodeList", vec![node("a", "linux")]));
            let (_, send) = v.next().await;
            send.ok(&daemonset());
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
        rbac::check_against(rbac::OPERATOR);
        assert!(
            matches!(result, Err(UninstallError::EnforcersRemain { .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn no_daemonset_means_nothing_to_do() {
        rbac::check_against(rbac::UNINSTALL);
        let (client, mut v) = verifier::client();
        let server = tokio::spawn(async move {
            let (_, send) = v
                .expect(
                    "GET",
                    "/apis/apps/v1/namespaces/palisade-system/daemonsets/palisade-enforcer",
                )
                .await;
            send.status(404, "NotFound");
            let (_, send) = v.expect("GET", CLEANUPS).await;
            send.ok(&list("PodList", vec![]));
        });
        let report = run(client, &settings()).await.expect("ran");
        server.await.expect("verifier");
        rbac::check_against(rbac::OPERATOR);
        assert_eq!(report, Report::default());
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
