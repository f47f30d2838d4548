//! The stream server: serves each node's compiled rule set to that node's
//! enforcer (protocol: `palisade_wire`), over TLS, after authenticating it.
//!
//! ```text
//!   hub.subscribe(node) ──► session ══ Snapshot / Current ══► enforcer
//!   hub.report_realised ◄── session ◄═══════ Report ══════════ enforcer
//!   audit ingest        ◄── session ◄═══════ Decisions ═══════ enforcer
//!   (committed) ──────────► session ═══ DecisionsAck { seq } ══► enforcer
//! ```
//!
//! A decision batch is acknowledged only once the audit ingest has committed it, in the
//! order the batches came; if one of them cannot be (the ingest queue is full, or this
//! replica stopped leading) the stream ends with `UNAVAILABLE`, so no later
//! acknowledgement can cover it and the enforcer sends it again on its next stream.
//!
//! A stream is served only when this replica leads ([`Hub::is_leader`]); losing
//! the lead ends every stream with `UNAVAILABLE`, so the enforcers reconnect (to
//! the new leader, through the Service). Every refusal is logged with its reason
//! and counted in `palisade_stream_refused_total{reason}`.

pub mod auth;
pub mod metrics;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_wire::{
    digest, parse_bearer, ClientMessage, DistributorServer, Hello, ServerMessage, MAX_MESSAGE_BYTES,
};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::audit::Ingest;
use crate::hub::Hub;
pub use auth::{AuthError, Authenticator, Identity, StaticTokens, TokenReviewAuthenticator};
pub use metrics::StreamMetrics;

/// A stream server that cannot start.
#[derive(Debug, Error)]
pub enum StreamError {
    #[error("{path}: {reason}")]
    Tls { path: String, reason: String },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stream server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("static tokens: {0}")]
    Tokens(#[from] auth::TokenFileError),
    #[error("enforcer authentication: {0}")]
    Auth(String),
}

/// How enforcers prove who they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthSettings {
    /// TokenReview with the API server: tokens of this ServiceAccount
    /// (`NS:NAME` or `system:serviceaccount:NS:NAME`), bound to a pod on the node
    /// asked for; `audiences` empty: the API server's default.
    TokenReview {
        service_account: String,
        audiences: Vec<String>,
    },
    /// A file of `TOKEN NODE` lines (the manifest-directory source: no API server).
    StaticTokens(PathBuf),
}

/// The stream server's settings (the operator's `--stream-*` flags).
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub listen: SocketAddr,
    /// PEM certificate chain and key of the server (re-read when they change).
    pub cert: PathBuf,
    pub key: PathBuf,
    pub auth: AuthSettings,
    pub timings: Timings,
}

/// Builds the authenticator of `settings` (`client`: the API client, needed for
/// TokenReview).
pub fn authenticator(
    settings: &AuthSettings,
    client: Option<kube::Client>,
) -> Result<Arc<dyn Authenticator>, StreamError> {
    match settings {
        AuthSettings::StaticTokens(path) => Ok(Arc::new(StaticTokens::load(path)?)),
        AuthSettings::TokenReview {
            service_account,
            audiences,
        } => {
            let client = client.ok_or_else(|| {
                StreamError::Auth(
                    "TokenReview needs the Kubernetes API (with a manifest directory, give a \
                     static token file)"
                        .to_string(),
                )
            })?;
            Ok(Arc::new(TokenReviewAuthenticator::new(
                client,
                service_account,
                audiences.clone(),
            )))
        }
    }
}

/// Binds, loads the certificate, and serves the stream until `shutdown`
/// completes (every open stream then ends with `UNAVAILABLE`). Errors at start
/// (address in use, unreadable certificate or token file) are returned at once.
pub async fn run(
    settings: StreamSettings,
    hub: Arc<Hub>,
    client: Option<kube::Client>,
    metrics: StreamMetrics,
    audit: Option<Ingest>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<Result<(), StreamError>>, StreamError> {
    let auth = authenticator(&settings.auth, client)?;
    let tls = tls::server_config(&settings.cert, &settings.key)?;
    let listener = bind(settings.listen).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
        // Keep the sender until every session saw the signal.
        stop_tx.closed().await;
    });
    let mut service = StreamService::new(hub, auth, metrics, settings.timings, stop_rx.clone());
    if let Some(ingest) = audit {
        service = service.with_audit(ingest);
    }
    tracing::info!(addr = %settings.listen, "enforcer stream: gRPC over TLS");
    Ok(tokio::spawn(serve(listener, tls, service, stop_rx)))
}

/// Timings of the server.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// How long a client may take for the TLS handshake and for its hello.
    pub handshake: Duration,
    /// HTTP/2 pings on idle connections (dead enforcers are noticed after
    /// `keepalive` + `keepalive_timeout`).
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
    /// A stream older than this (less up to a quarter, at random) is ended
    /// (`UNAVAILABLE`): the enforcer reconnects
    /// at once with its current token (projected tokens expire and rotate; a token
    /// is checked when a stream opens), and resumes without a resend.
    pub max_stream_age: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            handshake: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(10),
            max_stream_age: Duration::from_secs(30 * 60),
        }
    }
}

/// The `Distributor` service: one session per enforcer stream.
#[derive(Clone)]
pub struct StreamService {
    hub: Arc<Hub>,
    auth: Arc<dyn Authenticator>,
    metrics: StreamMetrics,
    timings: Timings,
    shutdown: watch::Receiver<bool>,
    /// Where decision batches go; `None`: they are not acknowledged (the enforcers keep
    /// them spooled).
    audit: Option<Ingest>,
}

impl StreamService {
    /// Stores the streams' decision batches through `ingest`.
    pub fn with_audit(mut self, ingest: Ingest) -> Self {
        self.audit = Some(ingest);
        self
    }

    /// `shutdown`: when it turns true, every stream ends with `UNAVAILABLE`.
    pub fn new(
        hub: Arc<Hub>,
        auth: Arc<dyn Authenticator>,
        metrics: StreamMetrics,
        timings: Timings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        StreamService {
            hub,
            auth,
            metrics,
            timings,
            shutdown,
            audit: None,
        }
    }

    fn refuse(&self, peer: &str, node: &str, reason: &str, status: Status) -> Status {
        tracing::warn!(
            peer,
            node,
            reason,
            code = ?status.code(),
            "enforcer stream refused: {}",
            status.message()
        );
        self.metrics.refuse(reason);
        status
    }
}

#[tonic::async_trait]
impl palisade_wire::Distributor for StreamService {
    type FollowStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn follow(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_bearer)
            .map(str::to_string);
        if !self.hub.is_leader() {
            return Err(self.refuse(
                &peer,
                "",
                "not_leader",
                Status::unavailable("this operator replica does not lead; retry"),
            ));
        }
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(self.timings.handshake, inbound.message()).await {
            Ok(Ok(Some(ClientMessage::Hello(h)))) => h,
            Ok(Ok(Some(ClientMessage::Report(_) | ClientMessage::Decisions(_)))) => {
                return Err(self.refuse(
                    &peer,
                    "",
                    "bad_hello",
                    Status::invalid_argument("the first message must be a hello"),
                ))
            }
            Ok(Ok(None)) => {
                return Err(self.refuse(
                    &peer,
                    "",
                    "bad_hello",
                    Status::invalid_argument("the stream ended before a hello"),
                ))
            }
            Ok(Err(status)) => {
                return Err(self.refuse(
                    &peer,
                    "",
                    "bad_hello",
                    Status::invalid_argument(format!("reading the hello: {}", status.message())),
                ))
            }
            Err(_) => {
                return Err(self.refuse(
                    &peer,
                    "",
                    "bad_hello",
                    Status::deadline_exceeded("no hello in time"),
                ))
            }
        };
        if hello.node.is_empty() || hello.node.len() > 253 {
            return Err(self.refuse(
                &peer,
                "",
                "bad_hello",
                Status::invalid_argument("the hello must name a node"),
            ));
        }
        let Some(token) = token else {
            return Err(self.refuse(
                &peer,
                &hello.node,
                "unauthenticated",
                Status::unauthenticated("no bearer token"),
            ));
        };
        let identity = match self.auth.authenticate(&token, &hello.node).await {
            Ok(id) => id,
            Err(e) => return Err(self.refuse(&peer, &hello.node, e.reason(), e.status())),
        };
        // Leadership may have moved while the token was checked.
        if !self.hub.is_leader() {
            return Err(self.refuse(
                &peer,
                &hello.node,
                "not_leader",
                Status::unavailable("this operator replica does not lead; retry"),
            ));
        }
        tracing::info!(
            peer,
            node = %identity.node,
            user = %identity.user,
            pod = identity.pod.as_deref().unwrap_or(""),
            agent = %hello.agent,
            applied = ?hello.applied.as_ref().map(|a| a.version),
            "enforcer connected"
        );
        let (tx, rx) = mpsc::channel(2);
        let session = Session {
            hub: Arc::clone(&self.hub),
            metrics: self.metrics.clone(),
            node: identity.node,
            peer,
            shutdown: self.shutdown.clone(),
            max_age: self.timings.max_stream_age,
            audit: self.audit.clone(),
        };
        tokio::spawn(session.run(hello, inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One authenticated enforcer stream.
struct Session {
    hub: Arc<Hub>,
    metrics: StreamMetrics,
    node: String,
    peer: String,
    shutdown: watch::Receiver<bool>,
    max_age: Duration,
    audit: Option<Ingest>,
}

/// Ends the stream with `status` (the enforcer retries).
async fn end(tx: &mpsc::Sender<Result<ServerMessage, Status>>, status: Status) {
    let _ = tx.send(Err(status)).await;
}

impl Session {
    async fn run(
        mut self,
        hello: Hello,
        mut inbound: Streaming<ClientMessage>,
        tx: mpsc::Sender<Result<ServerMessage, Status>>,
    ) {
        self.metrics.connected.inc();
        // Up to a quarter earlier, so streams opened together are not renewed together.
        let spread = (self.max_age / 4).as_millis() as u64;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
        let early = Duration::from_millis(if spread == 0 { 0 } else { nanos % spread });
        let expires = tokio::time::sleep(self.max_age.saturating_sub(early));
        tokio::pin!(expires);
        let mut desired = self.hub.subscribe(&self.node);
        let mut leadership = self.hub.leadership();
        let mut sent: Option<u64> = None;
        // Decision batches handed to the audit ingest, in the order they came: each
        // yields its seq once committed.
        let mut acks = futures::stream::FuturesOrdered::new();
        // The first answer: nothing to send when the enforcer has the desired
        // rules already (same digest), else the full rule set.
        let first = desired.borrow_and_update().clone();
        if let Some(state) = first {
            let current = hello
                .applied
                .as_ref()
                .is_some_and(|a| a.digest == digest(&state));
            let msg = if current {
                ServerMessage::Current {
                    version: state.version,
                }
            } else {
                ServerMessage::Snapshot(Arc::clone(&state))
            };
            if !self.send(&tx, msg).await {
                return self.close("send");
            }
            sent = Some(state.version);
        }
        loop {
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let state = desired.borrow_and_update().clone();
                    if let Some(state) = state {
                        if sent == Some(state.version) {
                            continue;
                        }
                        if !self.send(&tx, ServerMessage::Snapshot(Arc::clone(&state))).await {
                            return self.close("send");
                        }
                        sent = Some(state.version);
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(ClientMessage::Report(report))) => {
                        self.metrics.reports.inc();
                        let errors = report.error_lines();
                        if errors.is_empty() {
                            tracing::info!(node = %self.node, version = report.version, "rules realised");
                        } else {
                            tracing::warn!(node = %self.node, version = report.version, errors = ?errors, "rules realised with errors");
                        }
                        self.hub.report_realised(&self.node, report.version, errors);
                    }
                    Ok(Some(ClientMessage::Decisions(batch))) => {
                        tracing::debug!(node = %self.node, seq = batch.seq, decisions = batch.decisions.len(), "decision batch");
                        let Some(ingest) = &self.audit else {
                            continue;
                        };
                        // A node writes only under its own name: otherwise it could fill
                        // another node's `<node>/<id>` seqs and have that node's batches
                        // skipped as duplicates.
                        if let Err(why) = own_batch(&self.node, &batch) {
                            tracing::error!(node = %self.node, peer = %self.peer, source = %batch.source,
                                seq = batch.seq, "decision batch refused, stream ended: {why}");
                            end(&tx, Status::invalid_argument(format!("decision batch refused: {why}"))).await;
                            return self.close("audit_foreign_batch");
                        }
                        match ingest.submit(batch) {
                            Ok(done) => acks.push_back(done),
                            Err(e) => {
                                tracing::warn!(node = %self.node, "{e}: stream ended, the enforcer resends");
                                end(&tx, Status::unavailable("the audit log is behind; retry")).await;
                                return self.close("audit_backlog");
                            }
                        }
                    }
                    Ok(Some(ClientMessage::Hello(_))) => {
                        tracing::warn!(node = %self.node, peer = %self.peer, "second hello on a stream ignored");
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(node = %self.node, peer = %self.peer, error = %status.message(), "enforcer stream broken");
                        return self.close("receive");
                    }
                },
                done = futures::StreamExt::next(&mut acks), if !acks.is_empty() => match done {
                    Some(Ok(seq)) => {
                        if !self.send(&tx, ServerMessage::DecisionsAck { seq }).await {
                            return self.close("send");
                        }
                    }
                    // Dropped unwritten (lead lost, shutdown): no later ack may cover it.
                    _ => {
                        end(&tx, Status::unavailable("a decision batch was not stored; retry")).await;
                        return self.close("audit_dropped");
                    }
                },
                r = leadership.changed() => {
                    if r.is_err() || !*leadership.borrow_and_update() {
                        end(&tx, Status::unavailable("this operator replica lost the lead; retry")).await;
                        break;
                    }
                }
                r = self.shutdown.changed() => {
                    if r.is_err() || *self.shutdown.borrow_and_update() {
                        end(&tx, Status::unavailable("the operator is shutting down; retry")).await;
                        break;
                    }
                }
                () = &mut expires => {
                    end(&tx, Status::unavailable("stream renewed: reconnect with a fresh token")).await;
                    break;
                }
                _ = tx.closed() => break,
            }
        }
        self.close("")
    }

    async fn send(
        &self,
        tx: &mpsc::Sender<Result<ServerMessage, Status>>,
        msg: ServerMessage,
    ) -> bool {
        let what = match &msg {
            ServerMessage::Snapshot(s) => format!("snapshot version {}", s.version),
            ServerMessage::Current { version } => format!("current at version {version}"),
            ServerMessage::DecisionsAck { seq } => format!("decisions acknowledged up to {seq}"),
        };
        let snapshot = matches!(msg, ServerMessage::Snapshot(_));
        if tx.send(Ok(msg)).await.is_err() {
            return false;
        }
        if snapshot {
            self.metrics.snapshots.inc();
        }
        tracing::debug!(node = %self.node, "sent {what}");
        true
    }

    fn close(&self, error: &str) {
        if !error.is_empty() {
            self.metrics.error(error);
        }
        self.metrics.connected.dec();
        tracing::info!(node = %self.node, peer = %self.peer, "enforcer disconnected");
    }
}

/// Why `batch` may not be stored for `node` (its stream's authenticated node): the
/// source must be `<node>/<id>` with a non-empty id, and every decision and gap must name
/// `node`.
pub fn own_batch(node: &str, batch: &palisade_wire::audit::DecisionBatch) -> Result<(), String> {
    let id = batch
        .source
        .strip_prefix(node)
        .and_then(|rest| rest.strip_prefix('/'));
    if id.is_none_or(str::is_empty) {
        return Err(format!(
            "source {:?} is not \"{node}/<id>\" (this stream is node {node:?})",
            batch.source
        ));
    }
    let other = batch
        .decisions
        .iter()
        .map(|d| &d.node)
        .chain(batch.gaps.iter().map(|g| &g.node))
        .find(|n| n.as_str() != node);
    match other {
        Some(n) => Err(format!(
            "an entry names node {n:?} (this stream is node {node:?})"
        )),
        None => Ok(()),
    }
}

/// A connection whose TLS handshake is done, and its peer.
pub type TlsConn = (
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    SocketAddr,
);

/// Accepts on `listener` and runs each TLS handshake in a task of its own, bounded by
/// `handshake`, so a client that connects and sends nothing delays no one else: finished
/// connections come out of the channel in the order they finish. A failed or timed-out
/// handshake goes to `refused` (peer, why). The accept task ends once the receiver is
/// dropped.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake: Duration,
    refused: impl Fn(SocketAddr, &str) + Send + Sync + 'static,
) -> (mpsc::Receiver<TlsConn>, tokio::task::JoinHandle<()>) {
    let (conn_tx, conn_rx) = mpsc::channel(64);
    let refused = Arc::new(refused);
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = conn_tx.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let conn_tx = conn_tx.clone();
            let refused = Arc::clone(&refused);
            tokio::spawn(async move {
                match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => refused(peer, &format!("TLS handshake failed: {e}")),
                    Err(_) => refused(peer, "TLS handshake timed out"),
                }
            });
        }
    });
    (conn_rx, task)
}

/// Binds the stream's listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StreamError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StreamError::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// Serves `service` on `listener` over TLS until `shutdown` turns true (which
/// also ends every stream of `service` built with the same signal).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    service: StreamService,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StreamError> {
    let timings = service.timings;
    let metrics = service.metrics.clone();
    let refused = move |peer: SocketAddr, why: &str| {
        tracing::warn!(%peer, reason = "tls", "enforcer stream refused: {why}");
        metrics.refuse("tls");
    };
    let (conns, accept) =
        tls_incoming(listener, TlsAcceptor::from(tls), timings.handshake, refused);
    let incoming = tokio_stream::StreamExt::map(ReceiverStream::new(conns), |(tls, _peer)| {
        Ok::<_, std::io::Error>(tls)
    });
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(timings.keepalive))
        .http2_keepalive_timeout(Some(timings.keepalive_timeout))
        .add_service(
            DistributorServer::new(service)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                .max_decoding_message_size(16 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    accept.abort();
    Ok(result?)
}
