//! Discovery and watchers, with the exact requests asserted against a mocked API server.

use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::hub::Hub;
use crate::verifier::{self, ApiServerVerifier};

fn resource_list(group_version: &str, plurals: &[&str]) -> serde_json::Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
        "resources": plurals.iter().map(|p| json!({
            "name": p, "singularName": "", "namespaced": false, "kind": "X",
            "verbs": ["get", "list", "watch"],
        })).collect::<Vec<_>>(),
    })
}

/// Answers the three discovery requests: v1alpha2 missing, v1alpha1 with ANP only,
/// palisade.dev with both kinds.
async fn answer_discovery(v: &mut ApiServerVerifier) {
    let (_, send) = v
        .expect("GET", "/apis/policy.networking.k8s.io/v1alpha2")
        .await;
    send.status(404, "NotFound");
    let (_, send) = v
        .expect("GET", "/apis/policy.networking.k8s.io/v1alpha1")
        .await;
    send.ok(&resource_list(
        "policy.networking.k8s.io/v1alpha1",
        &["adminnetworkpolicies", "adminnetworkpolicies/status"],
    ));
    let (_, send) = v.expect("GET", "/apis/palisade.dev/v1alpha1").await;
    send.ok(&resource_list(
        "palisade.dev/v1alpha1",
        &["tiers", "tierednetworkpolicies"],
    ));
}

#[tokio::test]
async fn discovery_asks_each_group_version_once() {
    let (client, mut v) = verifier::client();
    let server = tokio::spawn(async move { answer_discovery(&mut v).await });
    let found = discover(&client).await;
    server.await.expect("verifier");
    assert_eq!(
        found,
        BTreeMap::from([
            (CrdKind::ClusterNetworkPolicy, Availability::NotInstalled),
            (CrdKind::AdminNetworkPolicy, Availability::Installed),
            (
                CrdKind::BaselineAdminNetworkPolicy,
                Availability::NotInstalled
            ),
            (CrdKind::Tier, Availability::Installed),
            (CrdKind::TieredNetworkPolicy, Availability::Installed),
        ])
    );
}

#[tokio::test]
async fn discovery_errors_are_not_taken_for_missing_crds() {
    let (client, mut v) = verifier::client();
    let server = tokio::spawn(async move {
        let (_, send) = v
            .expect("GET", "/apis/policy.networking.k8s.io/v1alpha2")
            .await;
        send.status(503, "ServiceUnavailable");
        let (_, send) = v
            .expect("GET", "/apis/policy.networking.k8s.io/v1alpha1")
            .await;
        send.status(403, "Forbidden");
        let (_, send) = v.expect("GET", "/apis/palisade.dev/v1alpha1").await;
        send.status(404, "NotFound");
    });
    let found = discover(&client).await;
    server.await.expect("verifier");
    assert!(matches!(
        found.get(&CrdKind::ClusterNetworkPolicy),
        Some(Availability::Unknown(_))
    ));
    assert!(matches!(
        found.get(&CrdKind::BaselineAdminNetworkPolicy),
        Some(Availability::Unknown(_))
    ));
    assert_eq!(found.get(&CrdKind::Tier), Some(&Availability::NotInstalled));
}

fn pod_json(name: &str, ip: &str, rv: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "prod", "resourceVersion": rv, "labels": {"app": name}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn list(kind: &str, rv: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items})
}

fn watch_lines(events: &[(&str, serde_json::Value)]) -> String {
    events
        .iter()
        .map(|(t, o)| format!("{}\n", json!({"type": t, "object": o})))
        .collect()
}

fn summary(event: &Event) -> String {
    match event {
        Event::Apply(o) => format!("apply {}", o.key()),
        Event::Delete(k) => format!("delete {k}"),
        Event::Reject(r) => format!("reject {}: {}", r.id, r.error),
        Event::ClearRejection(id) => format!("clear {id}"),
        Event::Synced => "synced".to_string(),
    }
}

async fn next(rx: &mut mpsc::Receiver<Event>) -> String {
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5 s")
        .expect("channel open");
    summary(&event)
}

#[tokio::test]
async fn pod_watcher_lists_converts_rejects_and_follows() {
    let (client, mut v) = verifier::client();
    let metrics = Metrics::new(Hub::new());
    let (tx, mut rx) = mpsc::channel(64);
    let (synced_tx, synced_rx) = oneshot::channel();
    let task = tokio::spawn(watch(
        Api::<Pod>::all(client),
        "Pod".to_string(),
        convert_pod,
        tx,
        metrics.clone(),
        Some(synced_tx),
        false,
    ));

    let (_, send) = v.expect("GET", "/api/v1/pods?&limit=500").await;
    send.ok(&list(
        "PodList",
        "10",
        vec![
            pod_json("web", "10.0.0.5", "8"),
            pod_json("bad", "10.0.0.999", "9"),
        ],
    ));
    assert_eq!(next(&mut rx).await, "apply Pod prod/web");
    assert_eq!(
        next(&mut rx).await,
        "reject Pod prod/bad: Pod prod/bad: field status.podIPs[0].ip: \"10.0.0.999\" is not an IP address"
    );
    synced_rx.await.expect("synced after the list");

    let (_, send) = v
        .expect(
            "GET",
            "/api/v1/pods?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=10",
        )
        .await;
    let mut finished = pod_json("web", "10.0.0.5", "12");
    finished["status"]["phase"] = json!("Succeeded");
    send.body(watch_lines(&[
        ("ADDED", pod_json("api", "10.0.0.6", "11")),
        ("MODIFIED", finished),
        ("DELETED", pod_json("bad", "10.0.0.999", "13")),
    ]));
    assert_eq!(next(&mut rx).await, "apply Pod prod/api");
    // A pod that finished leaves the index.
    assert_eq!(next(&mut rx).await, "delete Pod prod/web");
    // Deleting a rejected object clears its rejection.
    assert_eq!(next(&mut rx).await, "delete Pod prod/bad");

    // The watch ends; the watcher watches again from the last version seen.
    let (_, send) = v
        .expect(
            "GET",
            "/api/v1/pods?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=13",
        )
        .await;
    // 410 Gone in the stream: the watcher re-lists; what is no longer listed is deleted.
    send.body(watch_lines(&[(
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": "too old resource version", "reason": "Expired", "code": 410}),
    )]));
    let (_, send) = v.expect("GET", "/api/v1/pods?&limit=500").await;
    send.ok(&list(
        "PodList",
        "20",
        vec![pod_json("new", "10.0.0.7", "19")],
    ));
    assert_eq!(next(&mut rx).await, "apply Pod prod/new");
    assert_eq!(next(&mut rx).await, "delete Pod prod/api");
    assert!(metrics
        .encode()
        .contains("palisade_source_errors_total{source=\"Pod\"} 1"));
    task.abort();
}

fn anp_json(name: &str, priority: i64) -> serde_json::Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
        "metadata": {"name": name, "resourceVersion": "3"},
        "spec": {"priority": priority, "subject": {"namespaces": {}},
                 "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]},
    })
}

#[tokio::test]
async fn a_crd_watcher_rejects_objects_one_by_one_and_stops_when_the_crd_goes() {
    let (client, mut v) = verifier::client();
    let metrics = Metrics::new(Hub::new());
    let (tx, mut rx) = mpsc::channel(64);
    let source = KubeSource::new(client, metrics);
    let handle = source.watch_crd(CrdKind::AdminNetworkPolicy, &tx, None);

    let (_, send) = v
        .expect(
            "GET",
            "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies?&limit=500",
        )
        .await;
    let mut wrong_type = anp_json("wrong", 1);
    wrong_type["spec"]["priority"] = json!("high");
    send.ok(&list(
        "AdminNetworkPolicyList",
        "5",
        vec![
            anp_json("deny-all", 10),
            wrong_type,
            anp_json("too-high", 5000),
        ],
    ));
    assert_eq!(next(&mut rx).await, "apply AdminNetworkPolicy deny-all");
    let wrong = next(&mut rx).await;
    assert!(
        wrong.starts_with("reject AdminNetworkPolicy wrong: AdminNetworkPolicy wrong:"),
        "{wrong}"
    );
    let high = next(&mut rx).await;
    assert!(high.contains("spec.priority"), "{high}");

    // The CRD is removed: the watch answers 404; its objects go and the watcher stops.
    let (_, send) = v
        .expect(
            "GET",
            "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=5",
        )
        .await;
    send.status(404, "NotFound");
    let mut gone = vec![
        next(&mut rx).await,
        next(&mut rx).await,
        next(&mut rx).await,
    ];
    gone.sort();
    assert_eq!(
        gone,
        [
            "delete AdminNetworkPolicy deny-all",
            "delete AdminNetworkPolicy too-high",
            "delete AdminNetworkPolicy wrong"
        ]
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), handle)
        .await
        .expect("watcher stops")
        .expect("join");
}

/// The whole source: discovery, one watcher per kind, Synced once all listed.
#[tokio::test]
async fn the_source_syncs_once_every_kind_is_listed() {
    let (client, mut v) = verifier::client();
    let metrics = Metrics::new(Hub::new());
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(KubeSource::new(client, metrics).run(tx));
    answer_discovery(&mut v).await;

    // Then one list per watched kind, in any order (watchers run concurrently).
    let mut lists = BTreeMap::new();
    for _ in 0..7 {
        let (request, send) = v.next().await;
        let uri = request.uri().to_string();
        let answer = match uri.as_str() {
            "/api/v1/namespaces?&limit=500" => list(
                "NamespaceList",
                "1",
                vec![json!({"metadata": {"name": "prod"}})],
            ),
            "/api/v1/nodes?&limit=500" => list("NodeList", "1", vec![]),
            "/api/v1/pods?&limit=500" => {
                list("PodList", "1", vec![pod_json("web", "10.0.0.5", "1")])
            }
            "/apis/networking.k8s.io/v1/networkpolicies?&limit=500" => {
                list("NetworkPolicyList", "1", vec![])
            }
            "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies?&limit=500" => {
                list("AdminNetworkPolicyList", "1", vec![anp_json("a", 1)])
            }
            "/apis/palisade.dev/v1alpha1/tiers?&limit=500" => list("TierList", "1", vec![]),
            "/apis/palisade.dev/v1alpha1/tierednetworkpolicies?&limit=500" => {
                list("TieredNetworkPolicyList", "1", vec![])
            }
            other => panic!("unexpected request {other}"),
        };
        lists.insert(uri, ());
        send.ok(&answer);
    }
    assert_eq!(lists.len(), 7, "each kind listed once");
    let mut events = Vec::new();
    loop {
        let event = next(&mut rx).await;
        if event == "synced" {
            break;
        }
        events.push(event);
    }
    events.sort();
    assert_eq!(
        events,
        [
            "apply AdminNetworkPolicy a",
            "apply Namespace prod",
            "apply Pod prod/web"
        ]
    );
    // No ClusterNetworkPolicy or BaselineAdminNetworkPolicy watch was started: the next
    // requests are the watches of the seven listed kinds only.
    for _ in 0..7 {
        let (request, _send) = v.next().await;
        let uri = request.uri().to_string();
        assert!(uri.contains("watch=true"), "{uri}");
        assert!(
            !uri.contains("clusternetworkpolicies") && !uri.contains("baselineadmin"),
            "{uri}"
        );
        std::mem::forget(_send);
    }
    task.abort();
}

/// CRDs missing at start: the source syncs without them, then picks one up when discovery
/// finds it.
#[tokio::test]
async fn a_crd_installed_later_is_picked_up() {
    let (client, mut v) = verifier::client();
    let metrics = Metrics::new(Hub::new());
    let (tx, mut rx) = mpsc::channel(64);
    let source =
        KubeSource::new(client, metrics).with_recheck(std::time::Duration::from_millis(50));
    let task = tokio::spawn(source.run(tx));

    let mut discoveries = 0;
    let mut held = Vec::new();
    let mut synced = false;
    loop {
        let (request, send) = v.next().await;
        let uri = request.uri().to_string();
        match uri.as_str() {
            "/apis/policy.networking.k8s.io/v1alpha2" | "/apis/palisade.dev/v1alpha1" => {
                send.status(404, "NotFound")
            }
            "/apis/policy.networking.k8s.io/v1alpha1" => {
                discoveries += 1;
                if discoveries == 1 {
                    send.status(404, "NotFound");
                } else {
                    send.ok(&resource_list(
                        "policy.networking.k8s.io/v1alpha1",
                        &["adminnetworkpolicies"],
                    ));
                }
            }
            "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies?&limit=500" => {
                if !synced {
                    let event = rx.try_recv().expect("Synced sent before the CRD appeared");
                    assert_eq!(summary(&event), "synced");
                    synced = true;
                }
                assert!(synced);
                assert_eq!(discoveries, 2);
                send.ok(&list(
                    "AdminNetworkPolicyList",
                    "1",
                    vec![anp_json("late", 1)],
                ));
                break;
            }
            list_uri if list_uri.ends_with("?&limit=500") => send.ok(&list("List", "1", vec![])),
            watch_uri if watch_uri.contains("watch=true") => held.push(send),
            other => panic!("unexpected request {other}"),
        }
    }
    assert_eq!(next(&mut rx).await, "apply AdminNetworkPolicy late");
    drop(held);
    task.abort();
}
