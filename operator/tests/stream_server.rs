//! The stream server over loopback TLS: snapshot on connect, updates, resume,
//! one node's state per enforcer, refusals (wrong node, bad token, non-leader),
//! realisation reports into the hub.

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_operator::hub::Hub;
use palisade_operator::stream::{self, tls, StaticTokens, StreamMetrics, StreamService, Timings};
use palisade_policy::compiled::{NodeRuleSet, FORMAT_VERSION};
use palisade_wire::{
    bearer, digest, pki, Applied, ClientMessage, DistributorClient, Hello, Report, RuleError,
    ServerMessage,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status, Streaming};

const WAIT: Duration = Duration::from_secs(5);

struct Fixture {
    hub: Arc<Hub>,
    metrics: StreamMetrics,
    endpoint: String,
    ca: String,
    shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn state(node: &str, version: u64, ip: &str) -> NodeRuleSet {
    NodeRuleSet {
        format: FORMAT_VERSION,
        node: node.into(),
        version,
        node_ips: vec![ip.parse().expect("test address")],
        ..NodeRuleSet::default()
    }
}

async fn start() -> Fixture {
    start_with(Timings::default()).await
}

async fn start_with(timings: Timings) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = pki::write(dir.path(), &["localhost", "127.0.0.1"]).expect("pki");
    let hub = Hub::new();
    hub.set_leader(true);
    let metrics = StreamMetrics::new();
    let tokens = StaticTokens::new([("tok-n1", "n1"), ("tok-n2", "n2")]);
    let listener = stream::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let config = tls::server_config(&files.cert, &files.key).expect("tls config");
    let (shutdown, rx) = watch::channel(false);
    let service = StreamService::new(
        Arc::clone(&hub),
        Arc::new(tokens),
        metrics.clone(),
        timings,
        rx.clone(),
    );
    tokio::spawn(stream::serve(listener, config, service, rx));
    Fixture {
        hub,
        metrics,
        endpoint: format!("https://127.0.0.1:{}", addr.port()),
        ca: std::fs::read_to_string(&files.ca).expect("ca"),
        shutdown,
        _dir: dir,
    }
}

async fn channel(f: &Fixture) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&f.ca))
        .domain_name("localhost");
    Endpoint::from_shared(f.endpoint.clone())
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect")
}

struct Conn {
    tx: mpsc::Sender<ClientMessage>,
    rx: Streaming<ServerMessage>,
}

async fn follow(
    f: &Fixture,
    token: Option<&str>,
    node: &str,
    applied: Option<Applied>,
) -> Result<Conn, Status> {
    let mut client = DistributorClient::new(channel(f).await);
    let (tx, rx) = mpsc::channel(8);
    tx.send(ClientMessage::Hello(Hello {
        node: node.into(),
        applied,
        agent: "test".into(),
    }))
    .await
    .expect("queue hello");
    let mut req = Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", bearer(t).parse().expect("header"));
    }
    let rx = client.follow(req).await?.into_inner();
    Ok(Conn { tx, rx })
}

async fn next(conn: &mut Conn) -> ServerMessage {
    tokio::time::timeout(WAIT, conn.rx.message())
        .await
        .expect("a message in time")
        .expect("no stream error")
        .expect("stream open")
}

async fn nothing_within(conn: &mut Conn, d: Duration) {
    if let Ok(m) = tokio::time::timeout(d, conn.rx.message()).await {
        panic!("expected no message, got {m:?}");
    }
}

fn snapshot_version(msg: ServerMessage) -> (String, u64) {
    match msg {
        ServerMessage::Snapshot(s) => (s.node.clone(), s.version),
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn snapshot_on_connect_then_updates_and_reports() {
    let f = start().await;
    f.hub.publish(vec![state("n1", 1, "10.0.0.1")]);
    let mut conn = follow(&f, Some("tok-n1"), "n1", None)
        .await
        .expect("accepted");
    assert_eq!(snapshot_version(next(&mut conn).await), ("n1".into(), 1));
    f.hub.publish(vec![state("n1", 2, "10.0.0.2")]);
    assert_eq!(snapshot_version(next(&mut conn).await), ("n1".into(), 2));
    assert_eq!(f.metrics.connected.get(), 1);

    // The enforcer reports what it realised; the hub records it.
    let report = Report {
        version: 2,
        digest: digest(&state("n1", 2, "10.0.0.2")),
        rule_errors: vec![RuleError {
            policy: "NetworkPolicy default/web".into(),
            direction: "ingress".into(),
            rule: 0,
            reason: "domainNames cannot be enforced".into(),
        }],
        failed: None,
    };
    conn.tx
        .send(ClientMessage::Report(report))
        .await
        .expect("report queued");
    wait_for("the report in the hub", || {
        f.hub.realisation().get("n1").map(|r| r.version) == Some(2)
    })
    .await;
    let realised = f.hub.realisation();
    assert_eq!(
        realised["n1"].errors,
        vec!["NetworkPolicy default/web ingress rule 0: domainNames cannot be enforced"]
    );

    // Closing the stream counts the enforcer out.
    drop(conn);
    wait_for("disconnect", || f.metrics.connected.get() == 0).await;
}

#[tokio::test]
async fn nothing_until_the_node_has_a_state() {
    let f = start().await;
    let mut conn = follow(&f, Some("tok-n1"), "n1", None)
        .await
        .expect("accepted");
    nothing_within(&mut conn, Duration::from_millis(300)).await;
    f.hub.publish(vec![state("n1", 1, "10.0.0.1")]);
    assert_eq!(snapshot_version(next(&mut conn).await), ("n1".into(), 1));
}

#[tokio::test]
async fn each_enforcer_gets_only_its_own_node() {
    let f = start().await;
    f.hub
        .publish(vec![state("n1", 1, "10.0.0.1"), state("n2", 1, "10.0.1.1")]);
    let mut one = follow(&f, Some("tok-n1"), "n1", None).await.expect("n1");
    let mut two = follow(&f, Some("tok-n2"), "n2", None).await.expect("n2");
    assert_eq!(snapshot_version(next(&mut one).await), ("n1".into(), 1));
    assert_eq!(snapshot_version(next(&mut two).await), ("n2".into(), 1));
    // A change of n2 reaches n2 only.
    f.hub.publish(vec![state("n2", 2, "10.0.1.2")]);
    assert_eq!(snapshot_version(next(&mut two).await), ("n2".into(), 2));
    nothing_within(&mut one, Duration::from_millis(300)).await;
    f.hub.publish(vec![state("n1", 2, "10.0.0.2")]);
    assert_eq!(snapshot_version(next(&mut one).await), ("n1".into(), 2));
}

#[tokio::test]
async fn resume_from_the_last_version() {
    let f = start().await;
    let v1 = state("n1", 1, "10.0.0.1");
    f.hub.publish(vec![v1.clone()]);
    // Up to date: no snapshot, only the version to adopt; then updates as usual.
    let applied = Applied {
        version: 1,
        digest: digest(&v1),
    };
    let mut conn = follow(&f, Some("tok-n1"), "n1", Some(applied.clone()))
        .await
        .expect("accepted");
    assert_eq!(next(&mut conn).await, ServerMessage::Current { version: 1 });
    f.hub.publish(vec![state("n1", 2, "10.0.0.2")]);
    assert_eq!(snapshot_version(next(&mut conn).await), ("n1".into(), 2));
    drop(conn);

    // Behind: the full rule set of the current version.
    let mut conn = follow(&f, Some("tok-n1"), "n1", Some(applied))
        .await
        .expect("accepted");
    assert_eq!(snapshot_version(next(&mut conn).await), ("n1".into(), 2));
    drop(conn);

    // Same rules under another version number (an operator that restarted and
    // counts from 1 again): still current, nothing to re-apply.
    let after_restart = Applied {
        version: 17,
        digest: digest(&state("n1", 17, "10.0.0.2")),
    };
    let mut conn = follow(&f, Some("tok-n1"), "n1", Some(after_restart))
        .await
        .expect("accepted");
    assert_eq!(next(&mut conn).await, ServerMessage::Current { version: 2 });
}

#[tokio::test]
async fn wrong_node_and_bad_tokens_are_refused() {
    let f = start().await;
    f.hub
        .publish(vec![state("n1", 1, "10.0.0.1"), state("n2", 1, "10.0.1.1")]);
    let err = follow(&f, Some("tok-n1"), "n2", None)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("node n2"), "{}", err.message());
    assert_eq!(f.metrics.refused_count("wrong_node"), 1);

    let err = follow(&f, Some("forged"), "n1", None)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = follow(&f, None, "n1", None).await.err().expect("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(f.metrics.refused_count("unauthenticated"), 2);

    let err = follow(&f, Some("tok-n1"), "", None)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(f.metrics.refused_count("bad_hello"), 1);
    assert_eq!(f.metrics.connected.get(), 0);
}

#[tokio::test]
async fn only_the_leader_serves() {
    let f = start().await;
    f.hub.publish(vec![state("n1", 1, "10.0.0.1")]);
    f.hub.set_leader(false);
    let err = follow(&f, Some("tok-n1"), "n1", None)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(f.metrics.refused_count("not_leader"), 1);

    // Leading again: served; losing the lead ends the stream, retryably.
    f.hub.set_leader(true);
    let mut conn = follow(&f, Some("tok-n1"), "n1", None)
        .await
        .expect("accepted");
    assert_eq!(snapshot_version(next(&mut conn).await), ("n1".into(), 1));
    f.hub.set_leader(false);
    let end = tokio::time::timeout(WAIT, conn.rx.message())
        .await
        .expect("ends in time");
    assert_eq!(end.err().map(|s| s.code()), Some(Code::Unavailable));
}

#[tokio::test]
async fn shutdown_ends_streams_retryably() {
    let f = start().await;
    f.hub.publish(vec![state("n1", 1, "10.0.0.1")]);
    let mut conn = follow(&f, Some("tok-n1"), "n1", None)
        .await
        .expect("accepted");
    assert_eq!(snapshot_version(next(&mut conn).await), ("n1".into(), 1));
    f.shutdown.send_replace(true);
    let end = tokio::time::timeout(WAIT, conn.rx.message())
        .await
        .expect("ends in time");
    assert_eq!(end.err().map(|s| s.code()), Some(Code::Unavailable));
}

#[tokio::test]
async fn an_untrusted_server_certificate_is_refused_by_the_client() {
    let f = start().await;
    let other = tempfile::tempdir().expect("temp dir");
    let wrong = pki::write(other.path(), &["localhost"]).expect("pki");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read_to_string(&wrong.ca).expect("ca"),
        ))
        .domain_name("localhost");
    let result = Endpoint::from_shared(f.endpoint.clone())
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await;
    assert!(result.is_err(), "a server signed by another CA was trusted");
    wait_for("the refusal counted", || {
        f.metrics.refused_count("tls") == 1
    })
    .await;
}

#[tokio::test]
async fn old_streams_are_renewed() {
    let f = start_with(Timings {
        max_stream_age: Duration::from_millis(300),
        ..Timings::default()
    })
    .await;
    f.hub.publish(vec![state("n1", 1, "10.0.0.1")]);
    let mut conn = follow(&f, Some("tok-n1"), "n1", None)
        .await
        .expect("accepted");
    assert_eq!(snapshot_version(next(&mut conn).await), ("n1".into(), 1));
    let t = Instant::now();
    let end = tokio::time::timeout(WAIT, conn.rx.message())
        .await
        .expect("ends in time");
    assert_eq!(end.err().map(|s| s.code()), Some(Code::Unavailable));
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}
