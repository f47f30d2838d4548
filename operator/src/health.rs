//! The health and telemetry endpoints:
//!
//! - `GET /healthz`: 200 `ok` while the process serves HTTP.
//! - `GET /readyz`: 200 `ready` when the source has synced (and the index has been committed
//!   once) and this replica leads; else 503 with the reasons, one per line (`source not
//!   synced`, `not leader`). Followers are not ready, so a Service sends enforcers only to
//!   the leader.
//! - `GET /metrics`: Prometheus text ([`Metrics::encode`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::status::Status;

#[derive(Clone)]
struct Health {
    hub: Arc<Hub>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
}

/// The router of the health endpoints.
pub fn router(hub: Arc<Hub>, status: Arc<Status>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Health {
            hub,
            status,
            metrics,
        })
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    if !h.status.is_synced() {
        reasons.push("source not synced");
    }
    if !h.hub.is_leader() {
        reasons.push("not leader");
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join(", ")),
        )
    }
}

async fn metrics_text(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

/// Binds the health listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the health endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(hub, status, metrics))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read response");
        let code = response
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    #[tokio::test]
    async fn endpoints_answer_and_readiness_needs_sync_and_leadership() {
        let hub = Hub::new();
        let status = Status::new();
        let metrics = Metrics::new(hub.clone());
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            hub.clone(),
            status.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(
            body.contains("source not synced") && body.contains("not leader"),
            "{body}"
        );

        status.set_synced();
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!((code, body.trim()), (503, "not ready: not leader"));

        hub.set_leader(true);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_string()));

        metrics.set_objects("Pod", 7);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("palisade_objects{kind=\"Pod\"} 7"), "{body}");
        assert!(body.contains("# EOF"), "{body}");

        assert_eq!(get(addr, "/nope").await.0, 404);
        shutdown.cancel();
        server.await.expect("join").expect("serve");
    }
}
