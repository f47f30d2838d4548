//! The query API against a mocked API server (TokenReview, SubjectAccessReview: the exact
//! requests asserted) and a real SQLite file.

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use palisade_audit::{AuditStore, StoredDecision};
use palisade_wire::audit::{AuditDirection, Decision, DecisionBatch, Endpoint, Verdict};
use serde_json::json;
use tokio::sync::watch;
use tower::ServiceExt;

use super::access::Access;
use super::api::router;
use super::metrics::AuditMetrics;
use crate::verifier::{client, ApiServerVerifier};

const TOKEN_REVIEW: &str = "/apis/authentication.k8s.io/v1/tokenreviews?";
const ACCESS_REVIEW: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews?";

fn decision(src: (&str, &str), dst: (&str, &str), verdict: Verdict) -> Decision {
    let now = palisade_audit::now_ms();
    let ep = |(ns, pod): (&str, &str)| {
        Some(Endpoint {
            namespace: ns.into(),
            pod: pod.into(),
        })
    };
    Decision {
        first_seen_ms: now,
        last_seen_ms: now,
        count: 1,
        node: "n1".into(),
        direction: AuditDirection::Ingress,
        verdict,
        protocol: "tcp".into(),
        src_ip: "10.0.0.1".parse().expect("ip"),
        src_port: Some(1234),
        dst_ip: "10.0.0.2".parse().expect("ip"),
        dst_port: Some(80),
        src: ep(src),
        dst: ep(dst),
        rule_id: "P1R0I".into(),
        tier: "networkpolicy".into(),
        policy: Some("NetworkPolicy prod/web".into()),
        rule_index: Some(0),
        rule_name: None,
        isolated_by: vec![],
    }
}

struct Fixture {
    app: axum::Router,
    api: ApiServerVerifier,
    metrics: AuditMetrics,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/audit.db", dir.path().display());
    let store: Arc<dyn AuditStore> = palisade_audit::open(&url).await.expect("open");
    store
        .write_batch(
            &DecisionBatch {
                source: "n1/x".into(),
                seq: 1,
                decisions: vec![
                    decision(("dev", "curl"), ("prod", "web"), Verdict::Allow),
                    decision(("dev", "curl"), ("prod", "db"), Verdict::Deny),
                    decision(("dev", "curl"), ("dev", "cache"), Verdict::Allow),
                ],
                gaps: vec![],
            },
            palisade_audit::now_ms(),
        )
        .await
        .expect("write");
    let (_tx, slot) = watch::channel(Some(store));
    // Keep the sender alive for the test's length.
    std::mem::forget(_tx);
    let (kube, api) = client();
    let metrics = AuditMetrics::new();
    Fixture {
        app: router(slot, Access::new(kube), metrics.clone()),
        api,
        metrics,
        _dir: dir,
    }
}

fn get(uri: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().uri(uri);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::empty()).expect("request")
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(req).await.expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Answers the TokenReview: `alice` in group `dev`, or not authenticated.
async fn token_review(api: &mut ApiServerVerifier, authenticated: bool) {
    let (body, send) = api.expect("POST", TOKEN_REVIEW).await;
    assert_eq!(body["spec"]["token"], "tok");
    if authenticated {
        send.ok(&json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": "tok"},
            "status": {"authenticated": true,
                "user": {"username": "alice", "uid": "u1", "groups": ["dev", "system:authenticated"]}}
        }));
    } else {
        send.ok(&json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": "tok"},
            "status": {"authenticated": false, "error": "token expired"}
        }));
    }
}

/// Asserts the SubjectAccessReview (for `namespace`, or cluster-wide) and answers it.
async fn access_review(api: &mut ApiServerVerifier, namespace: Option<&str>, allowed: bool) {
    let (body, send) = api.expect("POST", ACCESS_REVIEW).await;
    let spec = &body["spec"];
    assert_eq!(spec["user"], "alice");
    assert_eq!(spec["uid"], "u1");
    assert_eq!(spec["groups"], json!(["dev", "system:authenticated"]));
    let mut attrs = json!({"group": "audit.palisade.io", "resource": "decisions", "verb": "get"});
    if let Some(ns) = namespace {
        attrs["namespace"] = json!(ns);
    }
    assert_eq!(spec["resourceAttributes"], attrs);
    send.ok(&json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": spec,
        "status": if allowed { json!({"allowed": true}) }
                  else { json!({"allowed": false, "reason": "no RBAC rule"}) }
    }));
}

#[tokio::test]
async fn allowed_in_the_namespace_asked_about() {
    let mut f = fixture().await;
    let app = f.app.clone();
    let call = tokio::spawn(async move {
        call(
            &app,
            get(
                "/api/v1/decisions?dst_namespace=prod&verdict=deny",
                Some("tok"),
            ),
        )
        .await
    });
    token_review(&mut f.api, true).await;
    access_review(&mut f.api, Some("prod"), true).await;
    let (status, body) = call.await.expect("join");
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows: Vec<StoredDecision> = serde_json::from_str(&body).expect("json");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].dst_pod.as_deref(), Some("db"));
    assert_eq!(f.metrics.api.get_or_create(&outcome("ok")).get(), 1);
}

#[tokio::test]
async fn every_namespace_asked_about_is_checked() {
    let mut f = fixture().await;
    let app = f.app.clone();
    let call = tokio::spawn(async move {
        call(
            &app,
            get(
                "/api/v1/decisions?src_namespace=dev&dst_namespace=prod",
                Some("tok"),
            ),
        )
        .await
    });
    token_review(&mut f.api, true).await;
    access_review(&mut f.api, Some("dev"), true).await;
    access_review(&mut f.api, Some("prod"), false).await;
    let (status, body) = call.await.expect("join");
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body.contains(
            "alice may not get decisions.audit.palisade.io in namespace prod: no RBAC rule"
        ),
        "{body}"
    );
}

#[tokio::test]
async fn no_namespace_needs_cluster_wide_access_and_csv_works() {
    let mut f = fixture().await;
    let app = f.app.clone();
    let call = tokio::spawn(async move {
        call(
            &app,
            get("/api/v1/decisions?format=csv&limit=2", Some("tok")),
        )
        .await
    });
    token_review(&mut f.api, true).await;
    access_review(&mut f.api, None, true).await;
    let (status, body) = call.await.expect("join");
    assert_eq!(status, StatusCode::OK, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3, "header and two rows: {body}");
    // The columns `palisade-cli audit --output csv` prints, in its order.
    assert_eq!(
        lines[0],
        palisade_audit::output::COLUMNS.join(","),
        "{body}"
    );
}

#[tokio::test]
async fn views_are_cluster_wide() {
    let mut f = fixture().await;
    let app = f.app.clone();
    let call =
        tokio::spawn(
            async move { call(&app, get("/api/v1/views/top-talkers", Some("tok"))).await },
        );
    token_review(&mut f.api, true).await;
    access_review(&mut f.api, None, true).await;
    let (status, body) = call.await.expect("join");
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn refused_without_a_valid_token() {
    let mut f = fixture().await;
    // No token: 401 without asking the API server.
    let (status, body) = call(&f.app, get("/api/v1/decisions", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("no bearer token"), "{body}");
    let app = f.app.clone();
    let call = tokio::spawn(async move { call(&app, get("/api/v1/decisions", Some("tok"))).await });
    token_review(&mut f.api, false).await;
    let (status, body) = call.await.expect("join");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("token expired"), "{body}");
    assert_eq!(
        f.metrics
            .api
            .get_or_create(&outcome("unauthenticated"))
            .get(),
        2
    );
}

#[tokio::test]
async fn bad_parameters_are_named() {
    let f = fixture().await;
    for (uri, needle) in [
        ("/api/v1/decisions?verdict=maybe", "verdict \"maybe\""),
        ("/api/v1/decisions?limit=0", "limit must be at least 1"),
        ("/api/v1/decisions?limit=100001", "over the maximum"),
        ("/api/v1/decisions?since=1h&until=2h", "ends"),
        ("/api/v1/decisions?limit=x", "limit \"x\""),
        ("/api/v1/decisions?since=yesterday", "\"yesterday\""),
        ("/api/v1/decisions?format=xml", "format \"xml\""),
        ("/api/v1/decisions?namespce=prod", "namespce"),
        ("/api/v1/decisions?namespace=", "namespace is empty"),
        (
            "/api/v1/views/top-talkers?namespace=prod",
            "only limit and format",
        ),
    ] {
        let (status, body) = call(&f.app, get(uri, Some("tok"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(body.contains(needle), "{uri}: {body}");
    }
}

/// A filter value with SQL in it is a value: allowed (in that odd namespace), it finds
/// nothing.
#[tokio::test]
async fn hostile_values_find_nothing() {
    let mut f = fixture().await;
    let app = f.app.clone();
    let call = tokio::spawn(async move {
        call(
            &app,
            get("/api/v1/decisions?pod=%27%20OR%201%3D1%20--", Some("tok")),
        )
        .await
    });
    token_review(&mut f.api, true).await;
    access_review(&mut f.api, None, true).await;
    let (status, body) = call.await.expect("join");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "[]");
}

fn outcome(o: &str) -> super::metrics::OutcomeLabels {
    super::metrics::OutcomeLabels {
        outcome: o.to_string(),
    }
}

/// The ingest opens the database only once this replica leads, and a batch the store
/// cannot hold is recorded as a gap (with the reason) and answered, not retried forever.
#[tokio::test]
async fn ingest_waits_for_the_lead_and_records_rejected_batches_as_gaps() {
    use super::ingest::{Backoff, IngestTask};
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/audit.db", dir.path().display());
    let hub = crate::hub::Hub::new();
    let metrics = AuditMetrics::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (ingest, store, task) = IngestTask {
        url,
        pod_ips: super::PodIps::new(),
        hub: Arc::clone(&hub),
        metrics: metrics.clone(),
        backoff: Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        shutdown: shutdown.clone(),
    }
    .spawn();
    let mut bad = decision(("dev", "curl"), ("prod", "web"), Verdict::Deny);
    bad.rule_name = Some("nul\0".into());
    let good = decision(("dev", "curl"), ("prod", "web"), Verdict::Allow);
    // Three batches queued while not leading are written as one group; the invalid one in
    // the middle sends the group back to one transaction per batch.
    let mut answers = Vec::new();
    for (seq, d) in [(8, good.clone()), (9, bad), (10, good)] {
        answers.push(
            ingest
                .submit(DecisionBatch {
                    source: "n1/x".into(),
                    seq,
                    decisions: vec![d],
                    gaps: vec![],
                })
                .expect("queued"),
        );
    }
    // Not leading: nothing opened, nothing answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.borrow().is_none());
    assert!(answers.iter_mut().all(|a| a.try_recv().is_err()));
    hub.set_leader(true);
    let mut seqs = Vec::new();
    for answer in answers {
        seqs.push(
            tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .expect("answered in time")
                .expect("answered"),
        );
    }
    assert_eq!(seqs, [8, 9, 10]);
    assert_eq!(metrics.rejected.get(), 1);
    assert_eq!(
        metrics.stored.get(),
        2,
        "the valid batches of the group stored"
    );
    let db = store.borrow().clone().expect("open");
    let gaps = db.gaps(0, 10).await.expect("gaps");
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0].source.as_str(), gaps[0].seq, gaps[0].lost),
        ("n1/x", 9, 1)
    );
    assert!(
        gaps[0].reason.contains("rejected by the operator") && gaps[0].reason.contains("NUL"),
        "{}",
        gaps[0].reason
    );
    shutdown.cancel();
    let _ = task.await;
}

/// The API over HTTPS (the stream's certificate, HTTP/1.1): a caller without a token gets
/// 401 with `WWW-Authenticate: Bearer`, and no request reaches the API server, promptly
/// even while another client holds an idle connection.
#[tokio::test]
async fn served_over_https() {
    let f = fixture().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = palisade_wire::pki::write(dir.path(), &["localhost", "127.0.0.1"]).expect("pki");
    let shutdown = tokio_util::sync::CancellationToken::new();
    // A free port: bind, read it, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let server = super::api::serve(listen, &pki.cert, &pki.key, f.app.clone(), shutdown.clone())
        .await
        .expect("serves");
    let ca = std::fs::read(&pki.ca).expect("ca");
    let der: Vec<Vec<u8>> = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::pem_slice_iter(&ca)
            .map(|c| c.expect("pem").to_vec())
            .collect()
    };
    let mut config = kube::Config::new(format!("https://localhost:{port}").parse().expect("uri"));
    config.root_cert = Some(der);
    let client = kube::Client::try_from(config).expect("client");
    // A client that connects and never starts its handshake (held for 10 s by the
    // server) must not hold up the next caller.
    let _idle = tokio::net::TcpStream::connect(listen)
        .await
        .expect("idle connection");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let request = http::Request::get("/api/v1/decisions?namespace=prod")
        .body(Vec::new())
        .expect("request");
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        client.send(request.map(kube::client::Body::from)),
    )
    .await
    .expect("answered while another client idles")
    .expect("answer");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
}

/// An ingest writing into a fresh SQLite file (or `url`), with short backoffs.
fn ingest_task(
    url: String,
    hub: &Arc<crate::hub::Hub>,
    metrics: &AuditMetrics,
    shutdown: &tokio_util::sync::CancellationToken,
) -> (super::Ingest, super::StoreSlot, tokio::task::JoinHandle<()>) {
    use super::ingest::{Backoff, IngestTask};
    IngestTask {
        url,
        pod_ips: super::PodIps::new(),
        hub: Arc::clone(hub),
        metrics: metrics.clone(),
        backoff: Backoff {
            first: std::time::Duration::from_millis(10),
            max: std::time::Duration::from_millis(50),
        },
        shutdown: shutdown.clone(),
    }
    .spawn()
}

/// Waits (bounded) until the slot holds a store (`open`) or is empty.
async fn slot_is(slot: &mut super::StoreSlot, open: bool) {
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slot.wait_for(|s| s.is_some() == open),
    )
    .await
    .expect("in time")
    .expect("slot kept");
}

/// A batch whose gap the store refuses too (no source: only the stream session keeps such
/// batches out) is logged, counted and acknowledged once; the batch behind it is stored.
#[tokio::test]
async fn a_batch_whose_gap_is_refused_is_acknowledged_not_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = crate::hub::Hub::new();
    hub.set_leader(true);
    let metrics = AuditMetrics::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let url = format!("sqlite://{}/audit.db", dir.path().display());
    let (ingest, mut slot, task) = ingest_task(url, &hub, &metrics, &shutdown);
    slot_is(&mut slot, true).await;
    let d = decision(("dev", "curl"), ("prod", "web"), Verdict::Allow);
    let mut answers = Vec::new();
    for (source, seq) in [("", 4), ("n1/x", 5)] {
        answers.push(
            ingest
                .submit(DecisionBatch {
                    source: source.into(),
                    seq,
                    decisions: vec![d.clone()],
                    gaps: vec![],
                })
                .expect("queued"),
        );
    }
    let mut seqs = Vec::new();
    for answer in answers {
        let seq = tokio::time::timeout(std::time::Duration::from_secs(10), answer)
            .await
            .expect("answered in time (not retried forever)")
            .expect("answered");
        seqs.push(seq);
    }
    assert_eq!(seqs, [4, 5]);
    assert_eq!(metrics.rejected.get(), 1);
    assert_eq!(metrics.stored.get(), 1);
    let db = slot.borrow().clone().expect("open");
    assert_eq!(db.count_decisions().await.expect("count"), 1);
    assert!(db.gaps(0, 10).await.expect("gaps").is_empty());
    shutdown.cancel();
    let _ = task.await;
}

/// A URL no backend takes is not retried: the task ends, counted in `open_failed`.
#[tokio::test]
async fn an_unusable_database_url_is_given_up_on() {
    let hub = crate::hub::Hub::new();
    hub.set_leader(true);
    let metrics = AuditMetrics::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (_ingest, slot, task) = ingest_task("mysql://u@db/audit".into(), &hub, &metrics, &shutdown);
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("gives up at once")
        .expect("task");
    assert_eq!(metrics.open_failed.get(), 1);
    assert_eq!(metrics.write_failures.get(), 0, "not retried");
    assert!(slot.borrow().is_none());
}

/// Only the leader holds the store: on lead loss it is closed and the slot emptied (the
/// query API answers 503), and it is opened again when the lead comes back.
#[tokio::test]
async fn the_store_is_closed_when_the_lead_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = crate::hub::Hub::new();
    let metrics = AuditMetrics::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let url = format!("sqlite://{}/audit.db", dir.path().display());
    let (ingest, mut slot, task) = ingest_task(url, &hub, &metrics, &shutdown);
    hub.set_leader(true);
    slot_is(&mut slot, true).await;
    let first = slot.borrow().clone().expect("open");
    hub.set_leader(false);
    slot_is(&mut slot, false).await;
    // The pool the slot held is closed: nothing keeps writing from this replica.
    assert!(
        first.count_decisions().await.is_err(),
        "closed on lead loss"
    );
    hub.set_leader(true);
    slot_is(&mut slot, true).await;
    let answer = ingest
        .submit(DecisionBatch {
            source: "n1/x".into(),
            seq: 1,
            decisions: vec![decision(("dev", "curl"), ("prod", "web"), Verdict::Allow)],
            gaps: vec![],
        })
        .expect("queued");
    let seq = tokio::time::timeout(std::time::Duration::from_secs(10), answer)
        .await
        .expect("in time")
        .expect("answered");
    assert_eq!(seq, 1);
    shutdown.cancel();
    let _ = task.await;
}
