//! The Lease requests, asserted exactly against a mocked API server.

use serde_json::json;

use super::*;
use crate::verifier::{self, ApiServerVerifier};

const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/palisade-system/leases/palisade-operator";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/palisade-system/leases?";
const NOW: &str = "2026-01-02T03:04:05.123456Z";

fn clock() -> Timestamp {
    NOW.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn elector() -> (LeaderElector, ApiServerVerifier) {
    let (client, verifier) = verifier::client();
    let config = LeaseConfig::new("palisade-system", "palisade-operator", "op-1");
    (
        LeaderElector::new(client, config).with_clock(clock),
        verifier,
    )
}

fn lease(holder: Option<&str>, renew: &str, transitions: i32, rv: &str) -> serde_json::Value {
    let mut spec = json!({
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-01-01T00:00:00.000000Z",
        "renewTime": renew,
        "leaseTransitions": transitions,
    });
    if let Some(holder) = holder {
        spec["holderIdentity"] = json!(holder);
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "palisade-operator", "namespace": "palisade-system", "resourceVersion": rv},
        "spec": spec,
    })
}

/// Runs one round while the verifier answers with `answer`.
async fn round<F, Fut>(elector: &mut LeaderElector, verifier: ApiServerVerifier, answer: F) -> bool
where
    F: FnOnce(ApiServerVerifier) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ApiServerVerifier> + Send,
{
    let server = tokio::spawn(async move {
        answer(verifier).await;
    });
    let held = elector.try_acquire_or_renew().await.expect("round");
    server.await.expect("verifier assertions");
    held
}

#[tokio::test]
async fn creates_the_missing_lease_then_renews_it() {
    let (mut elector, verifier) = elector();
    let server = tokio::spawn(async move {
        let mut v = verifier;
        let (body, send) = v.expect("GET", LEASE).await;
        assert_eq!(body, serde_json::Value::Null);
        send.status(404, "NotFound");
        let (body, send) = v.expect("POST", LEASES).await;
        assert_eq!(body["metadata"]["name"], "palisade-operator");
        assert_eq!(body["metadata"]["namespace"], "palisade-system");
        assert_eq!(
            body["spec"],
            json!({
                "holderIdentity": "op-1",
                "leaseDurationSeconds": 15,
                "acquireTime": NOW,
                "renewTime": NOW,
                "leaseTransitions": 0,
            })
        );
        let mut created = body.clone();
        created["metadata"]["resourceVersion"] = json!("1");
        send.json(201, &created);

        // Renew: read, then PUT with the resourceVersion read and a new renewTime only.
        let (_, send) = v.expect("GET", LEASE).await;
        send.ok(&lease(Some("op-1"), "2026-01-02T03:04:00.000000Z", 0, "1"));
        let (body, send) = v.expect("PUT", &format!("{LEASE}?")).await;
        assert_eq!(body["metadata"]["resourceVersion"], "1");
        assert_eq!(body["spec"]["holderIdentity"], "op-1");
        assert_eq!(body["spec"]["renewTime"], NOW);
        assert_eq!(body["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z");
        assert_eq!(body["spec"]["leaseTransitions"], 0);
        let mut renewed = body.clone();
        renewed["metadata"]["resourceVersion"] = json!("2");
        send.ok(&renewed);
        v
    });
    assert!(elector.try_acquire_or_renew().await.expect("create"));
    assert!(elector.try_acquire_or_renew().await.expect("renew"));
    let mut v = server.await.expect("verifier");

    // Release on shutdown: empty holder, 1 s, with the last resourceVersion.
    let server = tokio::spawn(async move {
        let (body, send) = v.expect("PUT", &format!("{LEASE}?")).await;
        assert_eq!(body["metadata"]["resourceVersion"], "2");
        assert_eq!(body["spec"].get("holderIdentity"), None);
        assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
        assert_eq!(body["spec"]["renewTime"], NOW);
        send.ok(&body);
    });
    elector.release().await.expect("release");
    server.await.expect("verifier");
}

#[tokio::test(start_paused = true)]
async fn waits_for_another_holders_lease_to_expire_on_its_own_clock() {
    let (mut elector, verifier) = elector();
    // Held by op-2, renewed "long ago" by the wall clock: no matter, this replica counts from
    // when it first saw the record. One GET, no write.
    let held = round(&mut elector, verifier, |mut v| async move {
        let (_, send) = v.expect("GET", LEASE).await;
        send.ok(&lease(Some("op-2"), "2020-01-01T00:00:00.000000Z", 3, "7"));
        v
    })
    .await;
    assert!(!held);
    assert_eq!(elector.holder(), Some("op-2"));
}

#[tokio::test(start_paused = true)]
async fn takes_over_an_expired_lease_and_counts_the_transition() {
    let (client, mut v) = verifier::client();
    let mut elector = LeaderElector::new(
        client,
        LeaseConfig::new("palisade-system", "palisade-operator", "op-1"),
    )
    .with_clock(clock);
    let stale = lease(Some("op-2"), "2026-01-02T03:00:00.000000Z", 3, "7");

    let answer = stale.clone();
    let server = tokio::spawn(async move {
        let (_, send) = v.expect("GET", LEASE).await;
        send.ok(&answer);
        v
    });
    assert!(!elector.try_acquire_or_renew().await.expect("first look"));
    let mut v = server.await.expect("verifier");

    // 10 s later, unchanged: not yet (15 s).
    tokio::time::advance(Duration::from_secs(10)).await;
    let answer = stale.clone();
    let server = tokio::spawn(async move {
        let (_, send) = v.expect("GET", LEASE).await;
        send.ok(&answer);
        v
    });
    assert!(!elector.try_acquire_or_renew().await.expect("still held"));
    let mut v = server.await.expect("verifier");

    // 16 s after first seeing it: expired; take it over.
    tokio::time::advance(Duration::from_secs(6)).await;
    let server = tokio::spawn(async move {
        let (_, send) = v.expect("GET", LEASE).await;
        send.ok(&stale);
        let (body, send) = v.expect("PUT", &format!("{LEASE}?")).await;
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(
            body["spec"],
            json!({
                "holderIdentity": "op-1",
                "leaseDurationSeconds": 15,
                "acquireTime": NOW,
                "renewTime": NOW,
                "leaseTransitions": 4,
            })
        );
        send.ok(&body);
        v
    });
    assert!(elector.try_acquire_or_renew().await.expect("take over"));
    let mut v = server.await.expect("verifier");

    // Another replica won the race: 409 on the PUT means not leading.
    let server = tokio::spawn(async move {
        let (_, send) = v.expect("GET", LEASE).await;
        send.ok(&lease(Some("op-1"), NOW, 4, "8"));
        let (_, send) = v.expect("PUT", &format!("{LEASE}?")).await;
        send.status(409, "Conflict");
    });
    assert!(!elector.try_acquire_or_renew().await.expect("conflict"));
    server.await.expect("verifier");
}

#[tokio::test]
async fn a_lease_released_by_its_holder_is_taken_at_once() {
    let (mut elector, verifier) = elector();
    let held = round(&mut elector, verifier, |mut v| async move {
        let (_, send) = v.expect("GET", LEASE).await;
        send.ok(&lease(None, NOW, 2, "9"));
        let (body, send) = v.expect("PUT", &format!("{LEASE}?")).await;
        assert_eq!(body["spec"]["holderIdentity"], "op-1");
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        send.ok(&body);
        v
    })
    .await;
    assert!(held);
}

#[tokio::test]
async fn losing_the_race_to_create_is_not_an_error() {
    let (mut elector, verifier) = elector();
    let held = round(&mut elector, verifier, |mut v| async move {
        let (_, send) = v.expect("GET", LEASE).await;
        send.status(404, "NotFound");
        let (_, send) = v.expect("POST", LEASES).await;
        send.status(409, "AlreadyExists");
        v
    })
    .await;
    assert!(!held);
}

#[tokio::test(start_paused = true)]
async fn run_reports_leadership_to_the_hub_and_releases_on_shutdown() {
    let (client, mut v) = verifier::client();
    let mut config = LeaseConfig::new("palisade-system", "palisade-operator", "op-1");
    config.retry_period = Duration::from_secs(2);
    let elector = LeaderElector::new(client, config).with_clock(clock);
    let hub = Hub::new();
    let metrics = Metrics::new(hub.clone());
    let shutdown = CancellationToken::new();
    let mut leadership = hub.leadership();
    let task = tokio::spawn(elector.run(hub.clone(), metrics.clone(), shutdown.clone()));

    let (_, send) = v.expect("GET", LEASE).await;
    send.status(404, "NotFound");
    let (body, send) = v.expect("POST", LEASES).await;
    let mut created = body.clone();
    created["metadata"]["resourceVersion"] = json!("1");
    send.json(201, &created);
    leadership.changed().await.expect("hub");
    assert!(hub.is_leader());
    assert!(metrics.encode().contains("palisade_leader 1"));

    // The API server stops answering: after the renew deadline the replica steps down.
    let (_, send) = v.expect("GET", LEASE).await;
    send.status(500, "InternalError");
    let (_, send) = v.expect("GET", LEASE).await;
    send.status(500, "InternalError");
    assert!(hub.is_leader(), "still within the renew deadline");
    for _ in 0..4 {
        let (_, send) = v.expect("GET", LEASE).await;
        send.status(500, "InternalError");
    }
    leadership.changed().await.expect("hub");
    assert!(!hub.is_leader(), "stepped down after 10 s without renewing");

    // Back: leads again, then releases on shutdown.
    let (_, send) = v.expect("GET", LEASE).await;
    send.ok(&lease(Some("op-1"), NOW, 0, "5"));
    let (body, send) = v.expect("PUT", &format!("{LEASE}?")).await;
    send.ok(&body);
    leadership.changed().await.expect("hub");
    assert!(hub.is_leader());
    shutdown.cancel();
    let (body, send) = v.expect("PUT", &format!("{LEASE}?")).await;
    assert_eq!(body["spec"].get("holderIdentity"), None);
    assert!(!hub.is_leader(), "stops leading before releasing");
    send.ok(&body);
    task.await.expect("run ends");
}
