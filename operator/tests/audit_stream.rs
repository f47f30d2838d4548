//! The audit log end to end through the stream server: a fake enforcer sends decision
//! batches over loopback TLS, the operator's ingest writes them into a real PostgreSQL
//! started here, and acknowledges each only after its commit.
//!
//! The outage: PostgreSQL is stopped (`-m immediate`) while the enforcer keeps sending,
//! for `OUTAGE` (8 s here; the scenario is 30 s: the mechanism does not depend on
//! the length, only on the ingest retrying and nothing being acknowledged meanwhile), then
//! started again: every batch is acknowledged, in order, and every decision is stored
//! once; the enforcer then sends every batch again (an acknowledgement lost with its
//! stream) and nothing is stored twice.

use std::sync::Arc;
use std::time::Duration;

use palisade_audit::pg_harness::PgServer;
use palisade_audit::DecisionFilter;
use palisade_operator::audit::{AuditMetrics, Backoff, IngestTask, PodIps};
use palisade_operator::hub::Hub;
use palisade_operator::stream::{self, tls, StaticTokens, StreamMetrics, StreamService, Timings};
use palisade_policy::model::Pod;
use palisade_wire::audit::{AuditDirection, Decision, DecisionBatch, Endpoint, Verdict};
use palisade_wire::{bearer, pki, ClientMessage, DistributorClient, Hello, ServerMessage};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint as TonicEndpoint};
use tonic::{Request, Streaming};

const WAIT: Duration = Duration::from_secs(20);
const OUTAGE: Duration = Duration::from_secs(8);

struct Conn {
    tx: mpsc::Sender<ClientMessage>,
    rx: Streaming<ServerMessage>,
}

async fn follow(endpoint: &str, ca: &str) -> Conn {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = TonicEndpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let mut client = DistributorClient::new(channel);
    let (tx, rx) = mpsc::channel(64);
    tx.send(ClientMessage::Hello(Hello {
        node: "n1".into(),
        applied: None,
        agent: "test".into(),
    }))
    .await
    .expect("hello");
    let mut req = Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", bearer("tok-n1").parse().expect("header"));
    let rx = client.follow(req).await.expect("accepted").into_inner();
    Conn { tx, rx }
}

async fn ack(conn: &mut Conn) -> u64 {
    match tokio::time::timeout(WAIT, conn.rx.message()).await {
        Ok(Ok(Some(ServerMessage::DecisionsAck { seq }))) => seq,
        other => panic!("expected an acknowledgement, got {other:?}"),
    }
}

fn pod(ns: &str, name: &str, ip: &str, host_network: bool) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: Default::default(),
        ips: vec![ip.parse().expect("ip")],
        node: Some("n2".into()),
        terminating: false,
        created: None,
        host_network,
        ports: vec![],
    }
}

/// `n` decisions from the local pod `default/client` to `dst_ip` (its end left to the
/// operator).
fn batch(seq: u64, n: usize, dst_ip: &str) -> DecisionBatch {
    let now = palisade_audit::now_ms();
    DecisionBatch {
        source: "n1/test".into(),
        seq,
        decisions: (0..n)
            .map(|i| Decision {
                first_seen_ms: now,
                last_seen_ms: now,
                count: 1,
                node: "n1".into(),
                direction: AuditDirection::Egress,
                verdict: if i % 2 == 0 {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                },
                protocol: "tcp".into(),
                src_ip: "10.1.0.1".parse().expect("ip"),
                src_port: Some(40_000 + i as u16),
                dst_ip: dst_ip.parse().expect("ip"),
                dst_port: Some(80),
                src: Some(Endpoint {
                    namespace: "default".into(),
                    pod: "client".into(),
                }),
                dst: None,
                rule_id: "P1R0E".into(),
                tier: "networkpolicy".into(),
                policy: Some("NetworkPolicy default/egress".into()),
                rule_index: Some(0),
                rule_name: None,
                isolated_by: vec![],
            })
            .collect(),
        gaps: vec![],
    }
}

/// A stream server whose decision batches go to an ingest writing into `url`.
struct Server {
    endpoint: String,
    ca: String,
    store: palisade_operator::audit::StoreSlot,
    metrics: AuditMetrics,
    shutdown: CancellationToken,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn serve(url: String) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = pki::write(dir.path(), &["localhost", "127.0.0.1"]).expect("pki");
    let hub = Hub::new();
    hub.set_leader(true);
    let pod_ips = PodIps::new();
    pod_ips.publish(&[
        pod("shop", "web", "10.2.0.5", false),
        pod("kube-system", "agent", "10.2.0.6", true),
    ]);
    let metrics = AuditMetrics::new();
    let shutdown = CancellationToken::new();
    let (ingest, store, _task) = IngestTask {
        url,
        pod_ips,
        hub: Arc::clone(&hub),
        metrics: metrics.clone(),
        backoff: Backoff {
            first: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        shutdown: shutdown.clone(),
    }
    .spawn();
    let listener = stream::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = tls::server_config(&files.cert, &files.key).expect("tls");
    let (stop, stop_rx) = watch::channel(false);
    let service = StreamService::new(
        Arc::clone(&hub),
        Arc::new(StaticTokens::new([("tok-n1", "n1")])),
        StreamMetrics::new(),
        Timings::default(),
        stop_rx.clone(),
    )
    .with_audit(ingest);
    tokio::spawn(stream::serve(listener, config, service, stop_rx));
    Server {
        endpoint: format!("https://127.0.0.1:{}", addr.port()),
        ca: std::fs::read_to_string(&files.ca).expect("ca"),
        store,
        metrics,
        shutdown,
        _stop: stop,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_survive_a_database_outage_stored_once() {
    let pg = PgServer::start_new().expect("postgres starts");
    let server = serve(pg.url()).await;
    let (endpoint, ca, store, metrics, shutdown) = (
        &server.endpoint,
        &server.ca,
        &server.store,
        &server.metrics,
        &server.shutdown,
    );

    let mut conn = follow(endpoint, ca).await;
    // Ends attributed by the operator: a pod, a host-network pod (no pod), an unknown
    // address (external).
    conn.tx
        .send(ClientMessage::Decisions(batch(1, 2, "10.2.0.5")))
        .await
        .expect("send");
    assert_eq!(ack(&mut conn).await, 1);
    conn.tx
        .send(ClientMessage::Decisions(batch(2, 1, "10.2.0.6")))
        .await
        .expect("send");
    assert_eq!(ack(&mut conn).await, 2);
    conn.tx
        .send(ClientMessage::Decisions(batch(3, 1, "203.0.113.7")))
        .await
        .expect("send");
    assert_eq!(ack(&mut conn).await, 3);
    let db = store.borrow().clone().expect("store open");
    let rows = db
        .decisions(&DecisionFilter {
            limit: Some(100),
            ..Default::default()
        })
        .await
        .expect("query");
    let dst_of = |ip: &str| {
        rows.iter()
            .find(|r| r.dst_ip == ip)
            .map(|r| (r.dst_namespace.clone(), r.dst_pod.clone()))
            .expect("row")
    };
    assert_eq!(
        dst_of("10.2.0.5"),
        (Some("shop".into()), Some("web".into()))
    );
    assert_eq!(dst_of("10.2.0.6"), (None, None), "host network: no pod");
    assert_eq!(dst_of("203.0.113.7"), (None, None), "external");

    // The outage: batches keep coming, none is acknowledged.
    pg.stop().expect("stop postgres");
    let started = std::time::Instant::now();
    let mut seq = 4;
    while started.elapsed() < OUTAGE {
        conn.tx
            .send(ClientMessage::Decisions(batch(seq, 50, "10.2.0.5")))
            .await
            .expect("send");
        seq += 1;
        if let Ok(m) = tokio::time::timeout(Duration::from_secs(1), conn.rx.message()).await {
            panic!("acknowledged while the database is down: {m:?}");
        }
    }
    let last = seq - 1;
    assert!(metrics.write_failures.get() > 0, "failures counted");
    pg.start().expect("start postgres");
    for expected in 4..=last {
        assert_eq!(ack(&mut conn).await, expected, "acknowledged in order");
    }
    let stored = 2 + 1 + 1 + 50 * (last - 3);
    assert_eq!(db.count_decisions().await.expect("count"), stored);

    // The acknowledgements were lost with the stream: the enforcer sends everything again.
    drop(conn);
    let mut conn = follow(endpoint, ca).await;
    let dup_before = metrics.duplicates.get();
    for s in 4..=last {
        conn.tx
            .send(ClientMessage::Decisions(batch(s, 50, "10.2.0.5")))
            .await
            .expect("send");
    }
    for expected in 4..=last {
        assert_eq!(ack(&mut conn).await, expected);
    }
    assert_eq!(
        db.count_decisions().await.expect("count"),
        stored,
        "nothing twice"
    );
    assert_eq!(metrics.duplicates.get() - dup_before, 50 * (last - 3));
    shutdown.cancel();
}

/// SQLite held by another writer's exclusive transaction (what a backup or a stuck process
/// does) for `LOCKED`: nothing acknowledged meanwhile, everything once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_wait_for_a_locked_sqlite_file() {
    const LOCKED: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/audit.db", dir.path().display());
    let server = serve(url.clone()).await;
    let mut conn = follow(&server.endpoint, &server.ca).await;
    conn.tx
        .send(ClientMessage::Decisions(batch(1, 10, "10.2.0.5")))
        .await
        .expect("send");
    assert_eq!(ack(&mut conn).await, 1);
    let other = palisade_audit::sqlite::SqliteStore::open(&url)
        .await
        .expect("second handle");
    let mut lock = other.pool().acquire().await.expect("connection");
    palisade_audit::sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let started = std::time::Instant::now();
    let mut seq = 2;
    while started.elapsed() < LOCKED {
        conn.tx
            .send(ClientMessage::Decisions(batch(seq, 10, "10.2.0.5")))
            .await
            .expect("send");
        seq += 1;
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(500), conn.rx.message()).await {
            panic!("acknowledged while the file is locked: {m:?}");
        }
    }
    palisade_audit::sqlx::query("COMMIT")
        .execute(&mut *lock)
        .await
        .expect("unlock");
    let last = seq - 1;
    for expected in 2..=last {
        assert_eq!(ack(&mut conn).await, expected);
    }
    assert!(server.metrics.write_failures.get() > 0);
    let db = server.store.borrow().clone().expect("open");
    assert_eq!(db.count_decisions().await.expect("count"), 10 * last);
    server.shutdown.cancel();
}

/// What the server answers next on `conn`: an error status, once the stream is refused.
async fn refused(conn: &mut Conn) -> tonic::Status {
    match tokio::time::timeout(WAIT, conn.rx.message()).await {
        Ok(Err(status)) => status,
        other => panic!("expected the stream to end with an error, got {other:?}"),
    }
}

/// A node writes only under its own name: a batch whose source is another node's (or has
/// no id), or whose entries name another node, ends the stream with a clear error and
/// nothing of it is stored; the node's own batches are then stored as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_write_under_another_nodes_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(format!("sqlite://{}/audit.db", dir.path().display())).await;
    let mut forged_node = batch(1, 2, "10.2.0.5");
    forged_node.decisions[1].node = "n2".into();
    let mut forged_gap = batch(1, 0, "10.2.0.5");
    forged_gap.gaps.push(palisade_wire::audit::Gap {
        node: "n2".into(),
        from_ms: 1,
        to_ms: 2,
        lost: 3,
        reason: "x".into(),
    });
    let cases = [
        ("n2/test", None),
        ("", None),
        ("n1/", None),
        ("n1", None),
        ("n1x/test", None),
        ("n1/test", Some(forged_node)),
        ("n1/test", Some(forged_gap)),
    ];
    for (source, forged) in cases {
        let mut conn = follow(&server.endpoint, &server.ca).await;
        let mut b = forged.unwrap_or_else(|| batch(1, 2, "10.2.0.5"));
        b.source = source.into();
        conn.tx
            .send(ClientMessage::Decisions(b))
            .await
            .expect("send");
        let status = refused(&mut conn).await;
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{source:?}: {status:?}"
        );
        assert!(
            status.message().contains("decision batch refused"),
            "{source:?}: {}",
            status.message()
        );
    }
    let db = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(db) = server.store.borrow().clone() {
                return db;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("store open");
    assert_eq!(db.count_decisions().await.expect("count"), 0);
    assert_eq!(db.gaps(0, 10).await.expect("gaps").len(), 0);
    let mut conn = follow(&server.endpoint, &server.ca).await;
    conn.tx
        .send(ClientMessage::Decisions(batch(1, 2, "10.2.0.5")))
        .await
        .expect("send");
    assert_eq!(ack(&mut conn).await, 1);
    assert_eq!(db.count_decisions().await.expect("count"), 2);
    server.shutdown.cancel();
}
