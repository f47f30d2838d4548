//! Writes what `kubectl get tierednetworkpolicies` shows and a printer column cannot
//! compute: `status.ingressRules` and `status.egressRules` (a JSONPath cannot count).
//! Only the leader writes, and only when the counts differ from what is there.

use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use palisade_crds::palisade::TieredNetworkPolicy;
use serde_json::json;
use tracing::{debug, warn};

use crate::hub::Hub;

/// The status patch a policy needs, or `None` when its counts are already right.
pub fn wanted(tnp: &TieredNetworkPolicy) -> Option<serde_json::Value> {
    let count = |n: Option<usize>| i32::try_from(n.unwrap_or(0)).unwrap_or(i32::MAX);
    let ingress = count(tnp.spec.ingress.as_ref().map(Vec::len));
    let egress = count(tnp.spec.egress.as_ref().map(Vec::len));
    let status = tnp.status.as_ref();
    let current = (
        status.and_then(|s| s.ingress_rules),
        status.and_then(|s| s.egress_rules),
    );
    (current != (Some(ingress), Some(egress)))
        .then(|| json!({"status": {"ingressRules": ingress, "egressRules": egress}}))
}

/// Writes the counts of one policy if they differ; returns whether it wrote.
pub async fn write_counts(
    api: &Api<TieredNetworkPolicy>,
    tnp: &TieredNetworkPolicy,
) -> Result<bool, kube::Error> {
    let (Some(patch), Some(name)) = (wanted(tnp), tnp.metadata.name.as_deref()) else {
        return Ok(false);
    };
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(true)
}

/// Follows every TieredNetworkPolicy and keeps its counts right while this replica
/// leads. A missing CRD only makes the watcher back off until it appears.
pub async fn run(client: kube::Client, hub: Arc<Hub>) {
    let api: Api<TieredNetworkPolicy> = Api::all(client);
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(tnp) if hub.is_leader() => match write_counts(&api, &tnp).await {
                Ok(wrote) => debug!(name = ?tnp.metadata.name, wrote, "tierednetworkpolicy status"),
                Err(e) => {
                    warn!(name = ?tnp.metadata.name, error = %e, "cannot write tierednetworkpolicy status")
                }
            },
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "tierednetworkpolicy watch (the CRD may not be installed yet)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier;

    fn tnp(status: serde_json::Value) -> TieredNetworkPolicy {
        serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1",
            "kind": "TieredNetworkPolicy",
            "metadata": {"name": "guard"},
            "spec": {
                "tier": "security",
                "priority": 5,
                "subject": {"namespaces": {}},
                "ingress": [
                    {"action": "Deny", "from": [{"namespaces": {}}]},
                    {"action": "Pass", "from": [{"namespaces": {}}]}
                ],
                "egress": [{"action": "Accept", "to": [{"networks": ["10.0.0.0/8"]}]}]
            },
            "status": status
        }))
        .expect("a valid TieredNetworkPolicy")
    }

    #[test]
    fn counts_are_wanted_only_when_they_differ() {
        assert_eq!(
            wanted(&tnp(json!({}))),
            Some(json!({"status": {"ingressRules": 2, "egressRules": 1}}))
        );
        assert_eq!(
            wanted(&tnp(json!({"ingressRules": 2, "egressRules": 1}))),
            None
        );
        assert!(wanted(&tnp(json!({"ingressRules": 1, "egressRules": 1}))).is_some());
    }

    #[tokio::test]
    async fn writes_the_status_subresource_with_a_merge_patch() {
        let (client, mut v) = verifier::client();
        let api: Api<TieredNetworkPolicy> = Api::all(client);
        let server = tokio::spawn(async move {
            let (body, send) = v
                .expect(
                    "PATCH",
                    "/apis/palisade.dev/v1alpha1/tierednetworkpolicies/guard/status?",
                )
                .await;
            assert_eq!(
                body,
                json!({"status": {"ingressRules": 2, "egressRules": 1}})
            );
            send.ok(
                &serde_json::to_value(tnp(json!({"ingressRules": 2, "egressRules": 1})))
                    .expect("json"),
            );
        });
        assert!(write_counts(&api, &tnp(json!({}))).await.expect("patched"));
        server.await.expect("verifier");
        // Right already: no request at all.
        let (client, _v) = verifier::client();
        let api: Api<TieredNetworkPolicy> = Api::all(client);
        assert!(
            !write_counts(&api, &tnp(json!({"ingressRules": 2, "egressRules": 1})))
                .await
                .expect("nothing to do")
        );
    }
}
