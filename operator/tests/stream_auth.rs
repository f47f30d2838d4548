//! TokenReview authentication against kube's mocked client (the ApiServerVerifier
//! pattern): the exact requests the operator makes are asserted and answered.

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use palisade_operator::stream::{AuthError, Authenticator, TokenReviewAuthenticator};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock::Handle;

const SA: &str = "system:serviceaccount:palisade-system:palisade-enforcer";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.projected.token";

type ApiServer = Handle<Request<Body>, Response<Body>>;

/// What the mocked API server is told to expect, and what it answers.
enum Exchange {
    /// A TokenReview of TOKEN (with these audiences), answered with this status.
    Review {
        audiences: Option<Vec<&'static str>>,
        status: Value,
    },
    /// A GET of a pod, answered with this HTTP code and body.
    GetPod {
        namespace: &'static str,
        name: &'static str,
        code: u16,
        body: Value,
    },
}

struct ApiServerVerifier(ApiServer);

impl ApiServerVerifier {
    /// Serves the exchanges in order; panics on anything else.
    fn run(self, exchanges: Vec<Exchange>) -> JoinHandle<()> {
        let mut handle = self.0;
        tokio::spawn(async move {
            for exchange in exchanges {
                let (request, send) = handle.next_request().await.expect("a request");
                let (code, body) = match exchange {
                    Exchange::Review { audiences, status } => {
                        assert_eq!(request.method(), Method::POST);
                        assert_eq!(
                            request.uri().to_string(),
                            "/apis/authentication.k8s.io/v1/tokenreviews?"
                        );
                        let bytes = request
                            .into_body()
                            .collect_bytes()
                            .await
                            .expect("request body");
                        let sent: Value = serde_json::from_slice(&bytes).expect("JSON body");
                        let mut spec = json!({ "token": TOKEN });
                        if let Some(a) = audiences {
                            spec["audiences"] = json!(a);
                        }
                        assert_eq!(
                            sent,
                            json!({
                                "apiVersion": "authentication.k8s.io/v1",
                                "kind": "TokenReview",
                                "metadata": {},
                                "spec": spec,
                            })
                        );
                        let mut answer = sent.clone();
                        answer["status"] = status;
                        (201, answer)
                    }
                    Exchange::GetPod {
                        namespace,
                        name,
                        code,
                        body,
                    } => {
                        assert_eq!(request.method(), Method::GET);
                        assert_eq!(
                            request.uri().to_string(),
                            format!("/api/v1/namespaces/{namespace}/pods/{name}")
                        );
                        (code, body)
                    }
                };
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
                        .expect("response"),
                );
            }
        })
    }
}

fn authenticator(audiences: Vec<String>) -> (TokenReviewAuthenticator, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    (
        TokenReviewAuthenticator::new(client, "palisade-system:palisade-enforcer", audiences),
        ApiServerVerifier(handle),
    )
}

fn authenticated(user: &str, extra: Value) -> Value {
    json!({
        "authenticated": true,
        "user": {
            "username": user,
            "uid": "4e4f5c8e-0000-4000-8000-000000000001",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:palisade-system", "system:authenticated"],
            "extra": extra,
        },
        "audiences": ["https://kubernetes.default.svc"],
    })
}

fn bound_extra(node: Option<&str>) -> Value {
    let mut extra = json!({
        "authentication.kubernetes.io/pod-name": ["palisade-enforcer-x7k2p"],
        "authentication.kubernetes.io/pod-uid": ["0f6f7c12-1111-4111-8111-000000000002"],
        "authentication.kubernetes.io/credential-id": ["JTI=abc"],
    });
    if let Some(n) = node {
        extra["authentication.kubernetes.io/node-name"] = json!([n]);
        extra["authentication.kubernetes.io/node-uid"] = json!(["node-uid-1"]);
    }
    extra
}

fn pod(node: Option<&str>, uid: &str) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "palisade-enforcer-x7k2p",
            "namespace": "palisade-system",
            "uid": uid,
        },
        "spec": { "containers": [{ "name": "enforcer", "image": "palisade/enforcer" }] },
    });
    if let Some(n) = node {
        pod["spec"]["nodeName"] = json!(n);
    }
    pod
}

#[tokio::test]
async fn accepts_the_enforcer_on_its_own_node() {
    let (auth, server) = authenticator(Vec::new());
    let api = server.run(vec![Exchange::Review {
        audiences: None,
        status: authenticated(SA, bound_extra(Some("worker-1"))),
    }]);
    let id = auth
        .authenticate(TOKEN, "worker-1")
        .await
        .expect("accepted");
    assert_eq!(id.user, SA);
    assert_eq!(id.node, "worker-1");
    assert_eq!(
        id.pod.as_deref(),
        Some("palisade-system/palisade-enforcer-x7k2p")
    );
    api.await.expect("api server");
}

#[tokio::test]
async fn sends_the_configured_audiences() {
    let (auth, server) = authenticator(vec!["palisade-operator".into()]);
    let api = server.run(vec![Exchange::Review {
        audiences: Some(vec!["palisade-operator"]),
        status: authenticated(SA, bound_extra(Some("worker-1"))),
    }]);
    auth.authenticate(TOKEN, "worker-1")
        .await
        .expect("accepted");
    api.await.expect("api server");
}

#[tokio::test]
async fn refuses_another_node() {
    let (auth, server) = authenticator(Vec::new());
    let api = server.run(vec![Exchange::Review {
        audiences: None,
        status: authenticated(SA, bound_extra(Some("worker-1"))),
    }]);
    let err = auth.authenticate(TOKEN, "worker-2").await.unwrap_err();
    assert_eq!(
        err,
        AuthError::WrongNode {
            asked: "worker-2".into(),
            actual: "worker-1".into()
        }
    );
    assert_eq!(err.reason(), "wrong_node");
    api.await.expect("api server");
}

#[tokio::test]
async fn refuses_a_token_the_api_server_rejects() {
    let (auth, server) = authenticator(Vec::new());
    let api = server.run(vec![Exchange::Review {
        audiences: None,
        status: json!({ "authenticated": false, "error": "token has expired" }),
    }]);
    let err = auth.authenticate(TOKEN, "worker-1").await.unwrap_err();
    assert_eq!(err, AuthError::Unauthenticated("token has expired".into()));
    api.await.expect("api server");
}

#[tokio::test]
async fn refuses_other_service_accounts() {
    let (auth, server) = authenticator(Vec::new());
    let api = server.run(vec![Exchange::Review {
        audiences: None,
        status: authenticated(
            "system:serviceaccount:default:default",
            bound_extra(Some("worker-1")),
        ),
    }]);
    let err = auth.authenticate(TOKEN, "worker-1").await.unwrap_err();
    assert_eq!(err.reason(), "wrong_user");
    assert!(err
        .to_string()
        .contains("system:serviceaccount:default:default"));
    api.await.expect("api server");
}

#[tokio::test]
async fn refuses_a_token_bound_to_no_pod() {
    let (auth, server) = authenticator(Vec::new());
    let api = server.run(vec![Exchange::Review {
        audiences: None,
        // A legacy Secret-based token: no pod, no node.
        status: authenticated(SA, json!({})),
    }]);
    let err = auth.authenticate(TOKEN, "worker-1").await.unwrap_err();
    assert_eq!(err.reason(), "no_node");
    api.await.expect("api server");
}

#[tokio::test]
async fn falls_back_to_the_pods_node() {
    // Before 1.30 bound tokens carry the pod but not the node: read the pod.
    let (auth, server) = authenticator(Vec::new());
    let api = server.run(vec![
        Exchange::Review {
            audiences: None,
            status: authenticated(SA, bound_extra(None)),
        },
        Exchange::GetPod {
            namespace: "palisade-system",
            name: "palisade-enforcer-x7k2p",
            code: 200,
            body: pod(Some("worker-3"), "0f6f7c12-1111-4111-8111-000000000002"),
        },
    ]);
    let id = auth
        .authenticate(TOKEN, "worker-3")
        .await
        .expect("accepted");
    assert_eq!(id.node, "worker-3");
    api.await.expect("api server");
}

#[tokio::test]
async fn the_fallback_refuses_another_node() {
    let (auth, server) = authenticator(Vec::new());
    let api = server.run(vec![
        Exchange::Review {
            audiences: None,
            status: authenticated(SA, bound_extra(None)),
        },
        Exchange::GetPod {
            namespace: "palisade-system",
            name: "palisade-enforcer-x7k2p",
            code: 200,
            body: pod(Some("worker-3"), "0f6f7c12-1111-4111-8111-000000000002"),
        },
    ]);
    let err = auth.authenticate(TOKEN, "worker-1").await.unwrap_err();
    assert_eq!(
        err,
        AuthError::WrongNode {
            asked: "worker-1".into(),
            actual: "worker-3".into()
        }
    );
    api.await.expect("api server");
}

#[tokio::test]
async fn the_fallback_refuses_a_replaced_or_missing_pod() {
    // Same name, another uid: the token's pod is gone, a new one took its name.
    let (auth, server) = authenticator(Vec::new());
    let api = server.run(vec![
        Exchange::Review {
            audiences: None,
            status: authenticated(SA, bound_extra(None)),
        },
        Exchange::GetPod {
            namespace: "palisade-system",
            name: "palisade-enforcer-x7k2p",
            code: 200,
            body: pod(Some("worker-3"), "another-uid"),
        },
    ]);
    let err = auth.authenticate(TOKEN, "worker-3").await.unwrap_err();
    assert_eq!(err.reason(), "no_node");
    api.await.expect("api server");

    let (auth, server) = authenticator(Vec::new());
    let api = server.run(vec![
        Exchange::Review {
            audiences: None,
            status: authenticated(SA, bound_extra(None)),
        },
        Exchange::GetPod {
            namespace: "palisade-system",
            name: "palisade-enforcer-x7k2p",
            code: 404,
            body: json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "pods \"palisade-enforcer-x7k2p\" not found",
                "reason": "NotFound", "code": 404,
            }),
        },
    ]);
    let err = auth.authenticate(TOKEN, "worker-3").await.unwrap_err();
    assert_eq!(err.reason(), "no_node");
    assert!(err.to_string().contains("does not exist"), "{err}");
    api.await.expect("api server");
}

#[tokio::test]
async fn an_api_server_error_is_retryable() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let auth = TokenReviewAuthenticator::new(client, SA, Vec::new());
    assert_eq!(auth.user(), SA);
    let api = tokio::spawn(async move {
        let (_request, send) = handle.next_request().await.expect("a request");
        send.send_response(
            Response::builder()
                .status(503)
                .body(Body::from(
                    serde_json::to_vec(&json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "etcdserver: request timed out", "reason": "ServiceUnavailable", "code": 503,
                    }))
                    .expect("JSON"),
                ))
                .expect("response"),
        );
    });
    let err = auth.authenticate(TOKEN, "worker-1").await.unwrap_err();
    assert_eq!(err.reason(), "auth_unavailable");
    assert_eq!(err.status().code(), tonic::Code::Unavailable);
    api.await.expect("api server");
}
