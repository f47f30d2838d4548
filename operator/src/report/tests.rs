//! Reports against a mocked API server: the exact requests and report bodies for each
//! situation the issue names (ok, unsupported field, node failed, selects nothing, wide open,
//! shadowed, unprotected pods), unchanged content (no write), the size cap, stale reports and
//! CRD installation.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use palisade_crds::parse_objects;
use serde_json::{json, Value};

use super::build::{build, Inputs, NodeView};
use super::kube::KubeWriter;
use super::mirror::Mirror;
use super::model::ReportSet;
use super::*;
use crate::hub::Realisation;
use crate::source::{RejectedObject, Rejection};
use crate::status::Status;
use crate::verifier::{self, ApiServerVerifier};
use tokio::sync::mpsc;

/// 2026-01-01T00:00:00Z: the time every test writes at.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a}}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 10.0.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {nodeName: n1}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec: {nodeName: n2}
status: {podIP: 10.1.0.2}
"#;

const WEB_ALLOW: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allow, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 80}]
"#;

fn mirror(yaml: &str) -> Mirror {
    let mut m = Mirror::default();
    for doc in parse_objects(yaml) {
        match doc.result {
            Ok(Some(object)) => m.apply(Event::Apply(object)),
            Ok(None) => {}
            Err(e) => panic!("fixture document {}: {e}", doc.document),
        }
    }
    m.apply(Event::Synced);
    m
}

/// Node `name` wants `desired` and its enforcer realised `realised` (with `errors`).
fn node(desired: u64, realised: Option<(u64, &[&str])>) -> NodeView {
    NodeView {
        desired,
        desired_since: now() - Duration::from_secs(30),
        realised: realised.map(|(version, errors)| Realisation {
            version,
            errors: errors.iter().map(|e| e.to_string()).collect(),
            at: now(),
        }),
    }
}

fn realised_everywhere() -> BTreeMap<String, NodeView> {
    [
        ("n1".to_string(), node(3, Some((3, &[])))),
        ("n2".to_string(), node(5, Some((5, &[])))),
    ]
    .into()
}

struct Case {
    yaml: String,
    nodes: BTreeMap<String, NodeView>,
    rejected: Vec<RejectedObject>,
    unprotected: bool,
    max: usize,
    denied: BTreeMap<String, u64>,
}

impl Case {
    fn new(policies: &str) -> Self {
        Case {
            yaml: format!("{BASE}---\n{policies}"),
            nodes: realised_everywhere(),
            rejected: Vec::new(),
            unprotected: true,
            max: 1000,
            denied: BTreeMap::new(),
        }
    }

    fn set(&self) -> ReportSet {
        let engine = Engine::new(mirror(&self.yaml).cluster()).expect("engine");
        let mut set = build(&Inputs {
            engine: Ok(&engine),
            nodes: &self.nodes,
            rejected: &self.rejected,
            denied: &self.denied,
            unprotected_pods: self.unprotected,
        });
        set.finish(self.max);
        set
    }
}

const LIST_POLR: &str =
    "/apis/wgpolicyk8s.io/v1alpha2/policyreports?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dpalisade";
const LIST_CPOLR: &str =
    "/apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dpalisade";
const APPLY: &str = "?&force=true&fieldManager=palisade";

fn polr_path(ns: &str) -> String {
    format!("/apis/wgpolicyk8s.io/v1alpha2/namespaces/{ns}/policyreports/palisade{APPLY}")
}

fn cpolr_path() -> String {
    format!("/apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports/palisade{APPLY}")
}

fn empty_list(kind: &str) -> Value {
    json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": format!("{kind}List"), "metadata": {}, "items": []})
}

fn openreports_list(plural: &str) -> String {
    format!("/apis/openreports.io/v1alpha1/{plural}?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dpalisade")
}

/// Answers the LISTs of a wgpolicyk8s writer's first sync: `existing` PolicyReports, no
/// ClusterPolicyReport, and an API server without the OpenReports CRDs.
async fn answer_lists(v: &mut ApiServerVerifier, existing: Vec<Value>) {
    let (_, send) = v.expect("GET", LIST_POLR).await;
    let mut list = empty_list("PolicyReport");
    list["items"] = Value::Array(existing);
    send.ok(&list);
    let (_, send) = v.expect("GET", LIST_CPOLR).await;
    send.ok(&empty_list("ClusterPolicyReport"));
    for plural in ["reports", "clusterreports"] {
        let (_, send) = v.expect("GET", &openreports_list(plural)).await;
        send.status(404, "NotFound");
    }
}

/// Runs a first sync of `set` and returns the bodies of the applies, by path.
async fn first_sync(set: ReportSet, max: usize) -> BTreeMap<String, Value> {
    let (client, mut v) = verifier::client();
    let scopes = set.reports.len();
    let server = tokio::spawn(async move {
        answer_lists(&mut v, Vec::new()).await;
        let mut bodies = BTreeMap::new();
        for _ in 0..scopes {
            let (request, send) = v.next().await;
            let path = request.uri().to_string();
            assert_eq!(request.method().as_str(), "PATCH", "{path}");
            assert_eq!(
                request
                    .headers()
                    .get("content-type")
                    .and_then(|h| h.to_str().ok()),
                Some("application/apply-patch+yaml"),
                "server-side apply"
            );
            let bytes = request.into_body().collect_bytes().await.expect("body");
            let body: Value = serde_json::from_slice(&bytes).expect("json body");
            send.ok(&body);
            bodies.insert(path, body);
        }
        bodies
    });
    let mut writer = KubeWriter::new(client, ReportApi::Wgpolicyk8s, max);
    let written = writer.sync(&set, now()).await.expect("sync");
    assert_eq!(written.applied.len(), scopes);
    server.await.expect("verifier")
}

fn results_of(body: &Value) -> Vec<Value> {
    body["results"].as_array().cloned().unwrap_or_default()
}

/// The one result of `policy` in category `category` (panics when not exactly one).
fn result(body: &Value, policy: &str, category: &str) -> Value {
    let found: Vec<Value> = results_of(body)
        .into_iter()
        .filter(|r| r["policy"] == policy && r["category"] == category)
        .collect();
    assert_eq!(found.len(), 1, "{policy} {category} in {body:#}");
    found[0].clone()
}

fn ts() -> Value {
    json!({"seconds": 1_767_225_600i64, "nanos": 0})
}

fn np_ref(name: &str) -> Value {
    json!([{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "namespace": "prod", "name": name}])
}

#[tokio::test]
async fn ok_exact_bodies() {
    let bodies = first_sync(Case::new(WEB_ALLOW).set(), 1000).await;
    assert_eq!(
        bodies.get(&polr_path("prod")),
        Some(&json!({
            "apiVersion": "wgpolicyk8s.io/v1alpha2",
            "kind": "PolicyReport",
            "metadata": {
                "name": "palisade",
                "namespace": "prod",
                "labels": {"app.kubernetes.io/managed-by": "palisade"}
            },
            "summary": {"pass": 1, "fail": 0, "warn": 1, "error": 0, "skip": 0},
            "results": [
                {
                    "source": "palisade",
                    "policy": "NetworkPolicy/web-allow",
                    "category": "realisation",
                    "severity": "info",
                    "timestamp": ts(),
                    "result": "pass",
                    "scored": true,
                    "resources": np_ref("web-allow"),
                    "message": "realised on every node hosting a selected pod (n1)",
                    "properties": {"nodes": "n1"}
                },
                {
                    "source": "palisade",
                    "policy": "palisade/unprotected-pods",
                    "category": "unprotected-pods",
                    "severity": "medium",
                    "timestamp": ts(),
                    "result": "warn",
                    "scored": true,
                    "resources": [{"apiVersion": "v1", "kind": "Pod", "namespace": "prod", "name": "db"}],
                    "message": "1 of 2 pods are selected by no policy for ingress (any source may connect): db",
                    "properties": {"pods": "1"}
                }
            ]
        }))
    );
    assert_eq!(
        bodies.get(&cpolr_path()),
        Some(&json!({
            "apiVersion": "wgpolicyk8s.io/v1alpha2",
            "kind": "ClusterPolicyReport",
            "metadata": {"name": "palisade", "labels": {"app.kubernetes.io/managed-by": "palisade"}},
            "summary": {"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0},
            "results": []
        }))
    );
}

#[tokio::test]
async fn unsupported_field_fails_naming_the_field() {
    let mut case = Case::new(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: no-exfil}
spec:
  priority: 10
  subject: {namespaces: {}}
  egress:
  - action: Deny
    to: [{domainNames: ["evil.example.com"]}]
"#,
    );
    case.rejected.push(RejectedObject {
        rejection: Rejection::object(
            palisade_crds::ObjectKey::Policy(palisade_policy::model::PolicyId {
                kind: palisade_policy::model::PolicyKind::NetworkPolicy,
                namespace: Some("prod".into()),
                name: "typo".into(),
            }),
            Some("policies.yaml document 2 (line 9)".into()),
            "NetworkPolicy prod/typo: unknown field spec.ingress[0].form",
        ),
        since: now(),
    });
    let bodies = first_sync(case.set(), 1000).await;
    let cluster = &bodies[&cpolr_path()];
    assert_eq!(
        result(cluster, "AdminNetworkPolicy/no-exfil", "unsupported"),
        json!({
            "source": "palisade",
            "policy": "AdminNetworkPolicy/no-exfil",
            "rule": "egress[0]",
            "category": "unsupported",
            "severity": "high",
            "timestamp": ts(),
            "result": "fail",
            "scored": true,
            "resources": [{"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy", "name": "no-exfil"}],
            "message": "spec.egress[0].to[0].domainNames cannot be enforced: enforced fail-closed (the rule denies all traffic in its direction)",
            "properties": {"field": "spec.egress[0].to[0].domainNames"}
        })
    );
    assert_eq!(cluster["summary"]["fail"], 1);
    let prod = &bodies[&polr_path("prod")];
    assert_eq!(
        result(prod, "NetworkPolicy/typo", "unsupported"),
        json!({
            "source": "palisade",
            "policy": "NetworkPolicy/typo",
            "category": "unsupported",
            "severity": "high",
            "timestamp": ts(),
            "result": "fail",
            "scored": true,
            "resources": np_ref("typo"),
            "message": "rejected, not applied (an earlier accepted version stays in force, if any): NetworkPolicy prod/typo: unknown field spec.ingress[0].form",
            "properties": {
                "origin": "policies.yaml document 2 (line 9)",
                "rejectedSince": "2026-01-01T00:00:00Z"
            }
        })
    );
}

#[tokio::test]
async fn node_failed_fails_naming_the_node_and_error_then_pending() {
    let mut case = Case::new(WEB_ALLOW);
    case.nodes.insert(
        "n1".into(),
        node(
            4,
            Some((
                3,
                &["version 4 not applied: iptables-restore: line 7 failed"],
            )),
        ),
    );
    let bodies = first_sync(case.set(), 1000).await;
    let prod = &bodies[&polr_path("prod")];
    assert_eq!(
        result(prod, "NetworkPolicy/web-allow", "realisation"),
        json!({
            "source": "palisade",
            "policy": "NetworkPolicy/web-allow",
            "category": "realisation",
            "severity": "high",
            "timestamp": ts(),
            "result": "fail",
            "scored": true,
            "resources": np_ref("web-allow"),
            "message": "not realised on 1 of 1 nodes (the previous rules stay in force there): node n1: version 4 not applied: iptables-restore: line 7 failed",
            "properties": {"failedNodes": "n1"}
        })
    );
    // Behind without a failure: pending, with since when.
    case.nodes.insert("n1".into(), node(4, Some((3, &[]))));
    let set = case.set();
    let f = set.reports[&model::Scope::Namespace("prod".into())]
        .iter()
        .find(|f| f.category == model::Category::Realisation)
        .cloned()
        .expect("realisation result");
    assert_eq!(f.result, palisade_crds::reports::ResultKind::Skip);
    assert_eq!(
        f.properties.get("pendingSince").map(String::as_str),
        Some("2025-12-31T23:59:30Z")
    );
}

#[tokio::test]
async fn selects_nothing_warns() {
    let case = Case::new(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ghost, namespace: prod}
spec:
  podSelector: {matchLabels: {app: nothing}}
  ingress: []
"#,
    );
    let bodies = first_sync(case.set(), 1000).await;
    assert_eq!(
        result(&bodies[&polr_path("prod")], "NetworkPolicy/ghost", "lint"),
        json!({
            "source": "palisade",
            "policy": "NetworkPolicy/ghost",
            "category": "lint",
            "severity": "medium",
            "timestamp": ts(),
            "result": "warn",
            "scored": true,
            "resources": np_ref("ghost"),
            "message": "selects no pods: it enforces nothing"
        })
    );
}

#[tokio::test]
async fn wide_open_rules_warn() {
    let case = Case::new(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - {}
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
"#,
    );
    let bodies = first_sync(case.set(), 1000).await;
    let prod = &bodies[&polr_path("prod")];
    let lints: Vec<(Value, Value)> = results_of(prod)
        .into_iter()
        .filter(|r| r["policy"] == "NetworkPolicy/open" && r["category"] == "lint")
        .map(|r| (r["rule"].clone(), r["message"].clone()))
        .collect();
    assert_eq!(
        lints,
        [
            (
                json!("egress[0]"),
                json!("wide open: 0.0.0.0/0: open to the internet")
            ),
            (
                json!("ingress[0]"),
                json!("wide open: allows every source (the rule has no from): open to the whole cluster and the internet")
            ),
        ]
    );
    assert_eq!(
        prod["summary"]["warn"], 3,
        "two lints and the unprotected pod db"
    );
}

#[tokio::test]
async fn shadowed_rule_warns_naming_the_higher_tier_rule() {
    let case = Case::new(&format!(
        r#"{WEB_ALLOW}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: lockdown}}
spec:
  priority: 10
  subject: {{namespaces: {{}}}}
  ingress:
  - action: Deny
    from: [{{namespaces: {{}}}}]
"#
    ));
    let bodies = first_sync(case.set(), 1000).await;
    let prod = &bodies[&polr_path("prod")];
    assert_eq!(
        result(prod, "NetworkPolicy/web-allow", "lint"),
        json!({
            "source": "palisade",
            "policy": "NetworkPolicy/web-allow",
            "rule": "ingress[0]",
            "category": "lint",
            "severity": "medium",
            "timestamp": ts(),
            "result": "warn",
            "scored": true,
            "resources": np_ref("web-allow"),
            "message": "shadowed: never decides anything, AdminNetworkPolicy lockdown ingress[0] (Deny) in tier admin decides every connection it matches first",
            "properties": {"shadowedBy": "AdminNetworkPolicy lockdown ingress[0]"}
        })
    );
    // A Pass rule before the Deny could send connections on: then nothing is reported.
    let case = Case::new(&format!(
        r#"{WEB_ALLOW}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: lockdown}}
spec:
  priority: 10
  subject: {{namespaces: {{}}}}
  ingress:
  - action: Pass
    from: [{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: db}}}}}}}}]
  - action: Deny
    from: [{{namespaces: {{}}}}]
"#
    ));
    let set = case.set();
    assert!(
        !set.reports[&model::Scope::Namespace("prod".into())]
            .iter()
            .any(|f| f.category == model::Category::Lint),
        "{set:#?}"
    );
}

#[tokio::test]
async fn unprotected_pods_listed_or_switched_off() {
    let bodies = first_sync(Case::new("").set(), 1000).await;
    let prod = &bodies[&polr_path("prod")];
    assert_eq!(
        result(prod, "palisade/unprotected-pods", "unprotected-pods")["message"],
        "2 of 2 pods are selected by no policy for ingress (any source may connect): db, web"
    );
    let mut case = Case::new("");
    case.unprotected = false;
    let set = case.set();
    assert!(set.reports[&model::Scope::Namespace("prod".into())].is_empty());
}

#[tokio::test]
async fn denied_counts_are_properties() {
    let mut case = Case::new(WEB_ALLOW);
    case.denied
        .insert("NetworkPolicy prod/web-allow".into(), 42);
    let set = case.set();
    let f = set.reports[&model::Scope::Namespace("prod".into())]
        .iter()
        .find(|f| f.category == model::Category::Realisation)
        .cloned()
        .expect("realisation");
    assert_eq!(
        f.properties.get("deniedLastHour").map(String::as_str),
        Some("42")
    );
}

#[tokio::test]
async fn unchanged_content_is_not_written_again_and_stale_reports_are_deleted() {
    let (client, mut v) = verifier::client();
    let set = Case::new(WEB_ALLOW).set();
    // The API server already holds the prod report as this content wrote it an hour ago,
    // and a report for a namespace that is gone.
    let (results, summary) = model::results(
        &set.reports[&model::Scope::Namespace("prod".into())],
        now() - Duration::from_secs(3600),
    );
    let old = json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
        "metadata": {"name": "palisade", "namespace": "prod", "labels": {"app.kubernetes.io/managed-by": "palisade"}},
        "summary": summary, "results": results
    });
    let gone = json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
        "metadata": {"name": "palisade", "namespace": "gone", "labels": {"app.kubernetes.io/managed-by": "palisade"}},
        "summary": {}, "results": []
    });
    let server = tokio::spawn(async move {
        answer_lists(&mut v, vec![old, gone]).await;
        // Only the cluster report (not listed) is written; prod is unchanged.
        let (body, send) = v.expect("PATCH", &cpolr_path()).await;
        send.ok(&body);
        let (_, send) = v
            .expect(
                "DELETE",
                "/apis/wgpolicyk8s.io/v1alpha2/namespaces/gone/policyreports/palisade?",
            )
            .await;
        send.ok(
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        );
        v
    });
    let mut writer = KubeWriter::new(client, ReportApi::Wgpolicyk8s, 1000);
    let written = writer.sync(&set, now()).await.expect("sync");
    assert_eq!(written.applied, ["ClusterPolicyReport palisade"]);
    assert_eq!(written.deleted, ["PolicyReport gone/palisade"]);
    let _v = server.await.expect("verifier");
    // Later, same content: no request at all (a request would wait for an answer forever).
    let again = tokio::time::timeout(
        Duration::from_secs(2),
        writer.sync(&set, now() + Duration::from_secs(60)),
    )
    .await
    .expect("no request made")
    .expect("sync");
    assert_eq!(again, Default::default());
}

/// Switched from `both` to `wgpolicyk8s`: the OpenReports objects Palisade wrote are no
/// longer kept up to date, so the first sync deletes them (and only Palisade's: the list is
/// by label).
#[tokio::test]
async fn reports_of_the_api_no_longer_written_are_deleted() {
    // The chart's rights with reports.api=wgpolicyk8s: no write to openreports.io.
    crate::rbac::features(&["reports", "wgpolicyk8s"]);
    let (client, mut v) = verifier::client();
    let set = Case::new(WEB_ALLOW).set();
    let scopes = set.reports.len();
    let server = tokio::spawn(async move {
        let (_, send) = v.expect("GET", LIST_POLR).await;
        send.ok(&empty_list("PolicyReport"));
        let (_, send) = v.expect("GET", LIST_CPOLR).await;
        send.ok(&empty_list("ClusterPolicyReport"));
        let ours = |kind: &str, ns: Option<&str>| {
            let mut meta =
                json!({"name": "palisade", "labels": {"app.kubernetes.io/managed-by": "palisade"}});
            if let Some(ns) = ns {
                meta["namespace"] = json!(ns);
            }
            json!({"apiVersion": "openreports.io/v1alpha1", "kind": kind, "metadata": meta, "results": []})
        };
        let (_, send) = v.expect("GET", &openreports_list("reports")).await;
        send.ok(
            &json!({"apiVersion": "openreports.io/v1alpha1", "kind": "ReportList", "metadata": {},
            "items": [ours("Report", Some("prod")), ours("Report", Some("db"))]}),
        );
        let (_, send) = v.expect("GET", &openreports_list("clusterreports")).await;
        send.ok(&json!({"apiVersion": "openreports.io/v1alpha1", "kind": "ClusterReportList", "metadata": {},
            "items": [ours("ClusterReport", None)]}));
        for _ in 0..scopes {
            let (request, send) = v.next().await;
            let uri = request.uri().to_string();
            assert_eq!(request.method().as_str(), "PATCH", "{uri}");
            assert!(uri.starts_with("/apis/wgpolicyk8s.io/"), "{uri}");
            let bytes = request.into_body().collect_bytes().await.expect("body");
            send.ok(&serde_json::from_slice::<Value>(&bytes).expect("json body"));
        }
        let gone =
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
        for path in [
            "/apis/openreports.io/v1alpha1/clusterreports/palisade?",
            "/apis/openreports.io/v1alpha1/namespaces/db/reports/palisade?",
            "/apis/openreports.io/v1alpha1/namespaces/prod/reports/palisade?",
        ] {
            let (_, send) = v.expect("DELETE", path).await;
            if path.contains("/db/") {
                // A failure there is no failure of the sync.
                send.status(500, "InternalError");
            } else {
                send.ok(&gone);
            }
        }
    });
    let mut writer = KubeWriter::new(client, ReportApi::Wgpolicyk8s, 1000);
    let written = writer.sync(&set, now()).await.expect("sync");
    assert_eq!(written.applied.len(), scopes);
    assert_eq!(
        written.deleted,
        ["ClusterReport palisade", "Report prod/palisade"]
    );
    server.await.expect("verifier");
    // Deleted once (the failed one waits for the next lead): the next sync (same
    // content) sends nothing.
    let again = tokio::time::timeout(Duration::from_secs(2), writer.sync(&set, now()))
        .await
        .expect("no request made")
        .expect("sync");
    assert_eq!(again, Default::default());
}

#[tokio::test]
async fn size_cap_replaces_the_rest_with_one_result() {
    let policies: Vec<String> = (0..6)
        .map(|i| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: prod}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress: []\n"
            )
        })
        .collect();
    let mut case = Case::new(&policies.join("---\n"));
    case.max = 4;
    let bodies = first_sync(case.set(), 4).await;
    let prod = &bodies[&polr_path("prod")];
    let results = results_of(prod);
    assert_eq!(results.len(), 4);
    // The warn about db stays; three of the six passes stay; the note says how many went.
    let note = result(prod, "palisade/report", "report");
    assert_eq!(
        note["message"],
        "4 more results left out (at most 4 per report): 4 pass"
    );
    assert_eq!(note["result"], "warn");
    assert_eq!(
        prod["summary"],
        json!({"pass": 2, "fail": 0, "warn": 2, "error": 0, "skip": 0})
    );
}

#[tokio::test]
async fn crds_are_installed_only_when_absent() {
    let (client, mut v) = verifier::client();
    let server = tokio::spawn(async move {
        let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        // PolicyReport's CRD is there (another tool's): left alone.
        let (_, send) = v
            .expect("GET", &format!("{crds}/policyreports.wgpolicyk8s.io"))
            .await;
        send.ok(&json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "policyreports.wgpolicyk8s.io"},
            "spec": {"group": "wgpolicyk8s.io", "names": {"kind": "PolicyReport", "plural": "policyreports"}, "scope": "Namespaced", "versions": []}
        }));
        let (_, send) = v
            .expect(
                "GET",
                &format!("{crds}/clusterpolicyreports.wgpolicyk8s.io"),
            )
            .await;
        send.status(404, "NotFound");
        let (body, send) = v.expect("POST", &format!("{crds}?")).await;
        assert_eq!(
            body["metadata"]["name"],
            "clusterpolicyreports.wgpolicyk8s.io"
        );
        assert_eq!(
            body["spec"]["versions"][0]["additionalPrinterColumns"][2]["jsonPath"],
            ".summary.pass"
        );
        send.json(201, &body);
    });
    let writer = KubeWriter::new(client, ReportApi::Wgpolicyk8s, 1000);
    let created = writer.install_crds().await.expect("install");
    assert_eq!(created, ["clusterpolicyreports.wgpolicyk8s.io"]);
    server.await.expect("verifier");
}

#[test]
fn report_api_setting() {
    assert_eq!("both".parse(), Ok(ReportApi::Both));
    assert_eq!("openreports".parse(), Ok(ReportApi::Openreports));
    assert!("kyverno".parse::<ReportApi>().is_err());
    assert!(ReportApi::Wgpolicyk8s.includes("wgpolicyk8s.io"));
    assert!(!ReportApi::Wgpolicyk8s.includes("openreports.io"));
}

#[test]
fn directory_writer_writes_changed_files_and_removes_stale_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = dir::DirWriter::new(dir.path().to_path_buf(), ReportApi::Both, 1000);
    let set = Case::new(WEB_ALLOW).set();
    let first = writer.sync(&set, now()).expect("sync");
    assert_eq!(first.applied.len(), 4, "{first:?}");
    let text = std::fs::read_to_string(dir.path().join("policyreport.prod.yaml")).expect("file");
    assert!(text.contains("kind: PolicyReport"), "{text}");
    assert!(text.contains("result: pass"), "{text}");
    // Same content later: nothing rewritten, also by a fresh writer (after a restart).
    assert_eq!(
        writer
            .sync(&set, now() + Duration::from_secs(5))
            .expect("sync"),
        Default::default()
    );
    let mut fresh = dir::DirWriter::new(dir.path().to_path_buf(), ReportApi::Both, 1000);
    assert_eq!(
        fresh
            .sync(&set, now() + Duration::from_secs(9))
            .expect("sync"),
        Default::default()
    );
    // The namespace's pods and policies go: its files go.
    let empty = ReportSet {
        reports: [(model::Scope::Cluster, Vec::new())].into(),
    };
    let last = fresh.sync(&empty, now()).expect("sync");
    assert_eq!(last.deleted.len(), 2, "{last:?}");
    assert!(!dir.path().join("policyreport.prod.yaml").exists());
    assert!(dir.path().join("clusterpolicyreport.yaml").exists());
}

#[tokio::test]
async fn the_report_task_follows_the_events_and_writes_only_as_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = ReportSettings {
        dir: Some(dir.path().to_path_buf()),
        interval: Duration::from_millis(20),
        ..ReportSettings::default()
    };
    let hub = Hub::new();
    let (reconcile_tx, mut reconcile_rx) = mpsc::channel(64);
    let (tx, task) = start(
        &settings,
        hub.clone(),
        Status::new(),
        None,
        Arc::new(NoAudit),
        reconcile_tx,
    )
    .expect("started");
    let task = task.expect("reports on");
    let mut sent = 0;
    for doc in parse_objects(&format!("{BASE}---\n{WEB_ALLOW}")) {
        if let Ok(Some(object)) = doc.result {
            tx.send(Event::Apply(object)).await.expect("send");
            sent += 1;
        }
    }
    tx.send(Event::Synced).await.expect("send");
    // Reconcile gets every event, in order.
    for _ in 0..=sent {
        tokio::time::timeout(Duration::from_secs(5), reconcile_rx.recv())
            .await
            .expect("reconcile fed")
            .expect("event");
    }
    let file = dir.path().join("policyreport.prod.yaml");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !file.exists(),
        "a replica that does not lead writes nothing"
    );
    hub.set_leader(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !file.exists() {
        assert!(std::time::Instant::now() < deadline, "no report written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(&file).expect("report");
    assert!(text.contains("NetworkPolicy/web-allow"), "{text}");
    // No node has realised anything: pending.
    assert!(text.contains("result: skip"), "{text}");
    task.abort();
}

#[tokio::test]
async fn openreports_get_the_same_results_with_source_and_limits() {
    crate::rbac::features(&["reports", "openreports"]);
    let (client, mut v) = verifier::client();
    let set = Case::new(WEB_ALLOW).set();
    let (wanted, _) = model::results(&set.reports[&model::Scope::Namespace("prod".into())], now());
    let wanted = serde_json::to_value(wanted).expect("json");
    let server = tokio::spawn(async move {
        // The API not written fails: one list forbidden (an RBAC without it), one
        // failing (its server down). Neither stops the reports of the API written.
        let (_, send) = v.expect("GET", LIST_POLR).await;
        send.status(403, "Forbidden");
        let (_, send) = v.expect("GET", LIST_CPOLR).await;
        send.status(503, "ServiceUnavailable");
        for plural in ["reports", "clusterreports"] {
            let (_, send) = v.expect("GET", &openreports_list(plural)).await;
            send.ok(&json!({"apiVersion": "openreports.io/v1alpha1", "kind": "List", "metadata": {}, "items": []}));
        }
        let (body, send) = v
            .expect(
                "PATCH",
                &format!("/apis/openreports.io/v1alpha1/clusterreports/palisade{APPLY}"),
            )
            .await;
        assert_eq!(body["kind"], "ClusterReport");
        send.ok(&body);
        let (body, send) = v
            .expect(
                "PATCH",
                &format!("/apis/openreports.io/v1alpha1/namespaces/prod/reports/palisade{APPLY}"),
            )
            .await;
        send.ok(&body);
        body
    });
    let mut writer = KubeWriter::new(client, ReportApi::Openreports, 1000);
    writer.sync(&set, now()).await.expect("sync");
    let body = server.await.expect("verifier");
    assert_eq!(body["apiVersion"], "openreports.io/v1alpha1");
    assert_eq!(body["kind"], "Report");
    assert_eq!(body["source"], "palisade");
    assert_eq!(
        body["configuration"],
        json!({"limits": {"maxResults": 1000}})
    );
    assert_eq!(
        body["results"], wanted,
        "the same results as the PolicyReport"
    );
}

/// Times one report build at scale (`cargo test -p palisade-operator --release --lib
/// report_build_at_scale -- --ignored --nocapture`): 10,000 pods in 500 namespaces, 2,000
/// NetworkPolicies (deny-all, two allows, an egress ipBlock per namespace), 100 nodes.
#[test]
#[ignore]
fn report_build_at_scale() {
    let mut yaml = String::new();
    for n in 0..100 {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: n{n}}}\nstatus: {{addresses: [{{type: InternalIP, address: 10.0.{n}.1}}]}}\n"
        ));
    }
    for ns in 0..500 {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{ns}, labels: {{team: t{}}}}}\n",
            ns % 10
        ));
        for p in 0..20 {
            let i = ns * 20 + p;
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{p}, namespace: ns{ns}, labels: {{app: a{}}}}}\nspec: {{nodeName: n{}}}\nstatus: {{podIP: 10.{}.{}.{}}}\n",
                p % 4, i % 100, 100 + i / 65536, (i / 256) % 256, i % 256
            ));
        }
        yaml.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: ns{ns}}}\nspec: {{podSelector: {{}}, policyTypes: [Ingress]}}\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: same-app, namespace: ns{ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: a0}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: a0}}}}}}], ports: [{{port: 8080}}]}}]\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: team, namespace: ns{ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: a1}}}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: t1}}}}}}], ports: [{{port: 9000, endPort: 9100}}]}}]\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: egress, namespace: ns{ns}}}\nspec:\n  podSelector: {{}}\n  egress: [{{to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}}}]}}]\n"
        ));
    }
    let m = mirror(&yaml);
    let nodes: BTreeMap<String, NodeView> = (0..100)
        .map(|n| (format!("n{n}"), node(1, Some((1, &[])))))
        .collect();
    let start = std::time::Instant::now();
    let engine = Engine::new(m.cluster()).expect("engine");
    let indexed = start.elapsed();
    let mut set = build(&Inputs {
        engine: Ok(&engine),
        nodes: &nodes,
        rejected: &[],
        denied: &BTreeMap::new(),
        unprotected_pods: true,
    });
    set.finish(1000);
    let total = start.elapsed();
    let results: usize = set.reports.values().map(Vec::len).sum();
    eprintln!(
        "{} reports, {results} results: index {indexed:?}, index + build {total:?}",
        set.reports.len()
    );
    assert_eq!(set.reports.len(), 501);
}

#[test]
fn priority_ties_warn_on_both_policies() {
    let anp = |name: &str| {
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  priority: 7\n  subject: {{namespaces: {{}}}}\n  ingress:\n  - action: Allow\n    from: [{{namespaces: {{matchLabels: {{team: a}}}}}}]\n"
        )
    };
    let set = Case::new(&format!("{}---\n{}", anp("first"), anp("second"))).set();
    let ties: Vec<(String, String)> = set.reports[&model::Scope::Cluster]
        .iter()
        .filter(|f| f.category == model::Category::Lint)
        .map(|f| (f.policy.clone(), f.message.clone()))
        .collect();
    assert_eq!(
        ties,
        [
            (
                "AdminNetworkPolicy/first".to_string(),
                "spec.priority: priority 7 in tier admin is shared with AdminNetworkPolicy second: ordered by kind, then name".to_string()
            ),
            (
                "AdminNetworkPolicy/second".to_string(),
                "spec.priority: priority 7 in tier admin is shared with AdminNetworkPolicy first: ordered by kind, then name".to_string()
            ),
        ]
    );
}

/// A Terminating pod whose address a new pod of another namespace already has: the loser's
/// namespace report warns, naming the address and the owner; the owner's says nothing.
#[test]
fn an_address_claimed_twice_warns_in_the_losers_namespace() {
    let set = Case::new(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: prod, labels: {app: old}, creationTimestamp: "2025-12-31T00:00:00Z", deletionTimestamp: "2025-12-31T23:59:00Z"}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.1.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: new, namespace: other, labels: {app: new}, creationTimestamp: "2025-12-31T23:59:30Z"}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.1.0.9}
"#,
    )
    .set();
    let conflicts = |ns: &str| -> Vec<(String, String, BTreeMap<String, String>)> {
        set.reports[&model::Scope::Namespace(ns.to_string())]
            .iter()
            .filter(|f| f.message.contains("also claimed"))
            .map(|f| (f.policy.clone(), f.message.clone(), f.properties.clone()))
            .collect()
    };
    let prod = conflicts("prod");
    assert_eq!(prod.len(), 1, "{prod:?}");
    let (policy, message, properties) = &prod[0];
    assert_eq!(policy, "Pod/old");
    assert!(
        message.starts_with("address 10.1.0.9 is also claimed by other/new, which owns it"),
        "{message}"
    );
    assert_eq!(
        properties.get("owner").map(String::as_str),
        Some("other/new")
    );
    assert_eq!(
        properties.get("address").map(String::as_str),
        Some("10.1.0.9")
    );
    assert!(conflicts("other").is_empty());
}

/// `--report-dir` with the Kubernetes source would leave the folder empty without a word:
/// refused at start, naming the flag and the source it is for (even with reports off, so a
/// later `--no-reports` removal does not turn it silent).
#[tokio::test]
async fn a_report_dir_with_the_kubernetes_source_is_refused() {
    for enabled in [true, false] {
        let (client, _v) = verifier::client();
        let settings = ReportSettings {
            enabled,
            dir: Some("/var/reports".into()),
            ..ReportSettings::default()
        };
        let (reconcile_tx, _rx) = mpsc::channel(1);
        let Err(err) = start(
            &settings,
            Hub::new(),
            Status::new(),
            Some(client),
            Arc::new(NoAudit),
            reconcile_tx,
        ) else {
            panic!("--report-dir with a client was accepted");
        };
        let text = err.to_string();
        assert!(matches!(err, ReportError::DirWithKubernetes(_)), "{text}");
        assert!(text.contains("--report-dir /var/reports"), "{text}");
        assert!(text.contains("--source dir:PATH"), "{text}");
    }
    // Without --report-dir the Kubernetes source writes to the API server.
    let (client, _v) = verifier::client();
    let (reconcile_tx, _rx) = mpsc::channel(1);
    let (_, task) = start(
        &ReportSettings::default(),
        Hub::new(),
        Status::new(),
        Some(client),
        Arc::new(NoAudit),
        reconcile_tx,
    )
    .expect("started");
    let task = task.expect("reports on");
    task.abort();
}
