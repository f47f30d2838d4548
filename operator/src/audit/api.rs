//! The read-only HTTP query API (HTTPS, on `--audit-api-listen`):
//!
//! - `GET /api/v1/decisions?namespace=&pod=&src_namespace=&src_pod=&dst_namespace=&dst_pod=`
//!   `&direction=ingress|egress&verdict=allow|deny&policy=&tier=&since=&until=&after_id=`
//!   `&limit=&format=json|csv`: decisions, newest first (oldest first after `after_id`).
//!   `since`/`until`: milliseconds since the epoch or an age (`15m`, `1h`, `7d`).
//! - `GET /api/v1/gaps?since=&limit=&format=`: what enforcers had to drop.
//! - `GET /api/v1/views/recent-denies`, `/api/v1/views/top-talkers`,
//!   `/api/v1/views/traffic-per-policy` (`?limit=&format=`): the SQL views.
//!
//! Every request needs `Authorization: Bearer TOKEN`; see [`super::access`] for the
//! permission checked. Answers: 200 (a JSON array, or CSV with a header line), 400 (a bad
//! parameter, named), 401, 403, 503 (the database is not open here: not the leader, or
//! down). Every filter value reaches the database as a bound parameter.

use std::collections::BTreeSet;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use palisade_audit::{
    now_ms, parse_direction, parse_time, parse_verdict, AuditError, AuditStore, DecisionFilter,
    StoredDecision,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::access::{Access, AccessError};
use super::ingest::StoreSlot;
use super::metrics::AuditMetrics;

#[derive(Clone)]
struct Api {
    store: StoreSlot,
    access: Access,
    metrics: AuditMetrics,
}

/// The query API's routes.
pub fn router(store: StoreSlot, access: Access, metrics: AuditMetrics) -> Router {
    Router::new()
        .route("/api/v1/decisions", get(decisions))
        .route("/api/v1/gaps", get(gaps))
        .route("/api/v1/views/recent-denies", get(recent_denies))
        .route("/api/v1/views/top-talkers", get(top_talkers))
        .route("/api/v1/views/traffic-per-policy", get(traffic_per_policy))
        .with_state(Api {
            store,
            access,
            metrics,
        })
}

/// The query string; unknown parameters are refused (a misspelt filter must not widen
/// the answer silently).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    namespace: Option<String>,
    pod: Option<String>,
    src_namespace: Option<String>,
    src_pod: Option<String>,
    dst_namespace: Option<String>,
    dst_pod: Option<String>,
    direction: Option<String>,
    verdict: Option<String>,
    policy: Option<String>,
    tier: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after_id: Option<String>,
    limit: Option<String>,
    format: Option<String>,
}

/// How an answer is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// A refusal or failure, with the HTTP status it maps to.
struct Failure {
    status: StatusCode,
    outcome: &'static str,
    message: String,
}

impl Failure {
    fn bad(message: impl Into<String>) -> Self {
        Failure {
            status: StatusCode::BAD_REQUEST,
            outcome: "bad_request",
            message: message.into(),
        }
    }
}

impl From<AccessError> for Failure {
    fn from(e: AccessError) -> Self {
        let (status, outcome) = match &e {
            AccessError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            AccessError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            AccessError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        Failure {
            status,
            outcome,
            message: e.to_string(),
        }
    }
}

impl From<AuditError> for Failure {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Filter(m) => Failure::bad(m),
            other => Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                outcome: "unavailable",
                message: other.to_string(),
            },
        }
    }
}

impl Params {
    fn format(&self) -> Result<Format, Failure> {
        match self.format.as_deref() {
            None | Some("json") => Ok(Format::Json),
            Some("csv") => Ok(Format::Csv),
            Some(other) => Err(Failure::bad(format!(
                "format {other:?}: expected json or csv"
            ))),
        }
    }

    fn limit(&self) -> Result<Option<u32>, Failure> {
        self.limit
            .as_deref()
            .map(|l| {
                l.parse::<u32>()
                    .map_err(|_| Failure::bad(format!("limit {l:?}: expected a whole number")))
            })
            .transpose()
    }

    /// The filter, every value checked.
    fn filter(&self) -> Result<DecisionFilter, Failure> {
        let now = now_ms();
        let time = |t: &Option<String>| t.as_deref().map(|t| parse_time(t, now)).transpose();
        let nonempty = |v: &Option<String>, name: &str| match v {
            Some(s) if s.is_empty() => Err(Failure::bad(format!("{name} is empty"))),
            other => Ok(other.clone()),
        };
        let filter = DecisionFilter {
            namespace: nonempty(&self.namespace, "namespace")?,
            pod: nonempty(&self.pod, "pod")?,
            src_namespace: nonempty(&self.src_namespace, "src_namespace")?,
            src_pod: nonempty(&self.src_pod, "src_pod")?,
            dst_namespace: nonempty(&self.dst_namespace, "dst_namespace")?,
            dst_pod: nonempty(&self.dst_pod, "dst_pod")?,
            direction: self.direction.as_deref().map(parse_direction).transpose()?,
            verdict: self.verdict.as_deref().map(parse_verdict).transpose()?,
            policy: nonempty(&self.policy, "policy")?,
            tier: nonempty(&self.tier, "tier")?,
            since_ms: time(&self.since)?,
            until_ms: time(&self.until)?,
            after_id: self
                .after_id
                .as_deref()
                .map(|a| {
                    a.parse::<i64>()
                        .map_err(|_| Failure::bad(format!("after_id {a:?}: expected a number")))
                })
                .transpose()?,
            limit: self.limit()?,
        };
        filter.validate()?;
        Ok(filter)
    }
}

/// The namespaces a filter asks about (`None`: the query is cluster-wide).
pub fn namespaces_of(filter: &DecisionFilter) -> Vec<Option<String>> {
    let named: BTreeSet<String> = [
        &filter.namespace,
        &filter.src_namespace,
        &filter.dst_namespace,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    if named.is_empty() {
        vec![None]
    } else {
        named.into_iter().map(Some).collect()
    }
}

impl Api {
    /// Authenticates and authorizes, then runs `query` on the store.
    async fn answer<T, F, Fut>(
        &self,
        headers: &HeaderMap,
        namespaces: Vec<Option<String>>,
        format: Format,
        render: fn(&[T], Format) -> Response,
        query: F,
    ) -> Response
    where
        T: Serialize,
        F: FnOnce(Arc<dyn AuditStore>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, AuditError>>,
    {
        let result = async {
            let token = bearer(headers)?;
            self.access.check(token, &namespaces).await?;
            let store = self.store.borrow().clone().ok_or_else(|| Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                outcome: "unavailable",
                message: "the audit database is not open on this replica (not the leader, or \
                          the database is unreachable)"
                    .into(),
            })?;
            Ok::<_, Failure>(query(store).await?)
        }
        .await;
        match result {
            Ok(rows) => {
                self.metrics.api_outcome("ok");
                render(&rows, format)
            }
            Err(f) => self.fail(f),
        }
    }

    fn fail(&self, f: Failure) -> Response {
        self.metrics.api_outcome(f.outcome);
        let mut response = (f.status, format!("{}\n", f.message)).into_response();
        if f.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, Failure> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(palisade_wire::parse_bearer)
        .ok_or_else(|| AccessError::Unauthenticated("no bearer token".into()).into())
}

type Q = Result<Query<Params>, axum::extract::rejection::QueryRejection>;

/// The parameters, or a 400 naming the one at fault.
fn params(q: Q) -> Result<Params, Failure> {
    q.map(|Query(p)| p).map_err(|e| Failure::bad(e.body_text()))
}

async fn decisions(State(api): State<Api>, headers: HeaderMap, q: Q) -> Response {
    let p = match params(q) {
        Ok(p) => p,
        Err(f) => return api.fail(f),
    };
    let (filter, format) = match p.filter().and_then(|f| Ok((f, p.format()?))) {
        Ok(x) => x,
        Err(f) => return api.fail(f),
    };
    let namespaces = namespaces_of(&filter);
    api.answer(
        &headers,
        namespaces,
        format,
        render_decisions,
        |store| async move { store.decisions(&filter).await },
    )
    .await
}

/// The common parameters of the views and gaps: `limit`, `format` (and `since` for gaps);
/// any other parameter is refused.
fn view_params(p: &Params, allow_since: bool) -> Result<(u32, Format, i64), Failure> {
    let extra = p.namespace.is_some()
        || p.pod.is_some()
        || p.src_namespace.is_some()
        || p.src_pod.is_some()
        || p.dst_namespace.is_some()
        || p.dst_pod.is_some()
        || p.direction.is_some()
        || p.verdict.is_some()
        || p.policy.is_some()
        || p.tier.is_some()
        || p.until.is_some()
        || p.after_id.is_some()
        || (!allow_since && p.since.is_some());
    if extra {
        return Err(Failure::bad(if allow_since {
            "this endpoint takes only since, limit and format"
        } else {
            "this endpoint takes only limit and format"
        }));
    }
    let limit = DecisionFilter {
        limit: p.limit()?,
        ..Default::default()
    }
    .limit()?;
    let since = match &p.since {
        Some(s) => parse_time(s, now_ms())?,
        None => 0,
    };
    Ok((limit, p.format()?, since))
}

macro_rules! view {
    ($name:ident, $allow_since:expr, |$store:ident, $limit:ident, $since:ident| $call:expr) => {
        async fn $name(State(api): State<Api>, headers: HeaderMap, q: Q) -> Response {
            let p = match params(q) {
                Ok(p) => p,
                Err(f) => return api.fail(f),
            };
            let ($limit, format, $since) = match view_params(&p, $allow_since) {
                Ok(x) => x,
                Err(f) => return api.fail(f),
            };
            let _ = $since;
            api.answer(&headers, vec![None], format, render, |$store| async move {
                $call.await
            })
            .await
        }
    };
}

view!(gaps, true, |store, limit, since| store.gaps(since, limit));
view!(recent_denies, false, |store, limit, since| store
    .recent_denies(limit));
view!(top_talkers, false, |store, limit, since| store
    .top_talkers(limit));
view!(traffic_per_policy, false, |store, limit, since| store
    .traffic_per_policy(limit));

/// Decisions as a JSON array, or CSV with the columns `palisade-cli audit` prints.
fn render_decisions(rows: &[StoredDecision], format: Format) -> Response {
    match format {
        Format::Json => render(rows, format),
        Format::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            palisade_audit::output::csv(rows, true),
        )
            .into_response(),
    }
}

/// A JSON array, or CSV with the fields of each row as columns (nested values as JSON).
fn render<T: Serialize>(rows: &[T], format: Format) -> Response {
    match format {
        Format::Json => match serde_json::to_string(rows) {
            Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
        Format::Csv => match csv(rows) {
            Ok(text) => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        },
    }
}

/// Every row or an error: a row that does not serialize as an object is never skipped.
fn csv<T: Serialize>(rows: &[T]) -> Result<String, String> {
    use palisade_audit::output::csv_field;
    let mut out = String::new();
    let objects = rows
        .iter()
        .enumerate()
        .map(|(i, r)| match serde_json::to_value(r) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(other) => Err(format!("row {i} is not an object: {other}")),
            Err(e) => Err(format!("row {i}: {e}")),
        })
        .collect::<Result<Vec<_>, String>>()?;
    let Some(first) = objects.first() else {
        return Ok(out);
    };
    let header: Vec<&String> = first.keys().collect();
    out.push_str(
        &header
            .iter()
            .map(|k| csv_field(k))
            .collect::<Vec<_>>()
            .join(","),
    );
    out.push_str("\r\n");
    for o in &objects {
        let line: Vec<String> = header
            .iter()
            .map(|k| match o.get(*k) {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => csv_field(s),
                Some(v) => csv_field(&v.to_string()),
            })
            .collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    Ok(out)
}

/// A TLS listener for axum: connections whose handshake is done (each in its own task,
/// within 10 s: `stream::tls_incoming`), so an idle client holds up no other caller.
struct TlsListener {
    conns: tokio::sync::mpsc::Receiver<crate::stream::TlsConn>,
    addr: std::net::SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.conns.recv().await {
            Some(conn) => conn,
            // The accept task ends only with the listener: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Binds `listen` and serves `router` over HTTPS (HTTP/1.1) with the certificate files
/// (re-read when they change) until `shutdown`.
pub async fn serve(
    listen: std::net::SocketAddr,
    cert: &std::path::Path,
    key: &std::path::Path,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, crate::stream::StreamError> {
    let mut config = (*crate::stream::tls::server_config(cert, key)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = crate::stream::bind(listen).await?;
    let addr = tcp.local_addr().unwrap_or(listen);
    let (conns, accept) = crate::stream::tls_incoming(
        tcp,
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        std::time::Duration::from_secs(10),
        |peer, why| tracing::warn!(%peer, "audit API: {why}"),
    );
    let listener = TlsListener {
        conns,
        addr,
        accept,
    };
    tracing::info!(addr = %listen, "audit query API: HTTPS /api/v1/decisions");
    Ok(tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }))
}
