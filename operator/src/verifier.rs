//! Tests against a mocked API server (the ApiServerVerifier pattern of kube-rs'
//! controller-rs): the code under test gets a `kube::Client` whose requests arrive here; the
//! test asserts each request exactly (method, path and query, body) and answers it.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use tower_test::mock::{self, Handle, SendResponse};

pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

/// A client wired to a verifier.
pub fn client() -> (kube::Client, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (
        kube::Client::new(service, "default"),
        ApiServerVerifier(handle),
    )
}

/// Answers one request.
pub struct Responder(SendResponse<Response<Body>>);

impl Responder {
    pub fn json(self, status: u16, body: &serde_json::Value) {
        let response = Response::builder()
            .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string().into_bytes()))
            .unwrap_or_else(|e| panic!("response: {e}"));
        self.0.send_response(response);
    }

    pub fn ok(self, body: &serde_json::Value) {
        self.json(200, body)
    }

    /// A `Status` failure, as the API server sends it.
    pub fn status(self, code: u16, reason: &str) {
        self.json(
            code,
            &serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("{reason} (test)"),
                "reason": reason, "code": code,
            }),
        )
    }

    /// A raw body (watch streams: one JSON event per line).
    pub fn body(self, text: String) {
        let response = Response::builder()
            .status(StatusCode::OK)
            .body(Body::from(text.into_bytes()))
            .unwrap_or_else(|e| panic!("response: {e}"));
        self.0.send_response(response);
    }
}

impl ApiServerVerifier {
    /// The next request, which must come within 5 s.
    pub async fn next(&mut self) -> (Request<Body>, Responder) {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request within 5 s"))
            .unwrap_or_else(|| panic!("client gone"));
        // Every call the code makes must be granted by the RBAC table the chart is made of.
        if let Err(e) = crate::rbac::granted(request.method().as_str(), &request.uri().to_string())
        {
            panic!("{e}");
        }
        (request, Responder(send))
    }

    /// The next request, asserted to be `method uri`; returns its JSON body (Null if empty).
    pub async fn expect(&mut self, method: &str, uri: &str) -> (serde_json::Value, Responder) {
        let (request, send) = self.next().await;
        assert_eq!(
            (
                request.method().as_str(),
                request.uri().to_string().as_str()
            ),
            (method, uri),
            "unexpected request"
        );
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_else(|e| panic!("request body: {e}"));
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("request body: {e}"))
        };
        (body, send)
    }
}
