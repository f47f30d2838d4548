//! The agent against a scripted operator over loopback TLS: snapshot applied and
//! reported, updates, resume after a restart from the state file (applied before
//! the operator answers), rules kept and reconnection with backoff while the
//! operator is down or refuses, a failed apply retried, another node's rules
//! never applied. The kernel is replaced by a recorder; the lab tests the real one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_enforcer::stream::{run_agent, AgentConfig, Applier, Emit};
use palisade_policy::compiled::{NodeRuleSet, FORMAT_VERSION};
use palisade_wire::{
    digest, parse_bearer, pki, ClientMessage, DistributorServer, Hello, Report, RuleError,
    ServerMessage,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(10);

fn state(node: &str, version: u64, ip: &str) -> NodeRuleSet {
    NodeRuleSet {
        format: FORMAT_VERSION,
        node: node.into(),
        version,
        node_ips: vec![ip.parse().expect("test address")],
        ..NodeRuleSet::default()
    }
}

/// A scripted operator: serves `desired` to whoever connects (any node name),
/// records hellos, tokens and reports.
#[derive(Clone, Default)]
struct Fake {
    inner: Arc<FakeInner>,
}

#[derive(Default)]
struct FakeInner {
    desired: Mutex<Option<watch::Sender<Option<Arc<NodeRuleSet>>>>>,
    refuse: Mutex<Option<Status>>,
    hellos: Mutex<Vec<Hello>>,
    tokens: Mutex<Vec<String>>,
    reports: Mutex<Vec<Report>>,
    attempts: Mutex<Vec<Instant>>,
    sent_first: Mutex<Vec<String>>,
    /// Decision batches received (source, seq), and whether to acknowledge them.
    batches: Mutex<Vec<(String, u64)>>,
    ack: Mutex<bool>,
}

impl Fake {
    fn desired(&self) -> watch::Sender<Option<Arc<NodeRuleSet>>> {
        self.inner
            .desired
            .lock()
            .expect("lock")
            .get_or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    fn publish(&self, s: NodeRuleSet) {
        self.desired().send_replace(Some(Arc::new(s)));
    }

    fn reports(&self) -> Vec<Report> {
        self.inner.reports.lock().expect("lock").clone()
    }

    fn hellos(&self) -> Vec<Hello> {
        self.inner.hellos.lock().expect("lock").clone()
    }

    fn attempts(&self) -> Vec<Instant> {
        self.inner.attempts.lock().expect("lock").clone()
    }
}

#[tonic::async_trait]
impl palisade_wire::Distributor for Fake {
    type FollowStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn follow(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        self.inner
            .attempts
            .lock()
            .expect("lock")
            .push(Instant::now());
        if let Some(token) = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_bearer)
        {
            self.inner
                .tokens
                .lock()
                .expect("lock")
                .push(token.to_string());
        }
        if let Some(status) = self.inner.refuse.lock().expect("lock").clone() {
            return Err(status);
        }
        let mut inbound = request.into_inner();
        let Ok(Some(ClientMessage::Hello(hello))) = inbound.message().await else {
            return Err(Status::invalid_argument("no hello"));
        };
        self.inner.hellos.lock().expect("lock").push(hello.clone());
        let mut desired = self.desired().subscribe();
        let (tx, rx) = mpsc::channel(4);
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let first = desired.borrow_and_update().clone();
            if let Some(s) = first {
                let current = hello
                    .applied
                    .as_ref()
                    .is_some_and(|a| a.digest == digest(&s));
                let msg = if current {
                    ServerMessage::Current { version: s.version }
                } else {
                    ServerMessage::Snapshot(s)
                };
                inner
                    .sent_first
                    .lock()
                    .expect("lock")
                    .push(if current { "current" } else { "snapshot" }.into());
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    c = desired.changed() => {
                        if c.is_err() { return; }
                        let s = desired.borrow_and_update().clone();
                        if let Some(s) = s {
                            if tx.send(Ok(ServerMessage::Snapshot(s))).await.is_err() { return; }
                        }
                    }
                    m = inbound.message() => match m {
                        Ok(Some(ClientMessage::Report(r))) => inner.reports.lock().expect("lock").push(r),
                        Ok(Some(ClientMessage::Hello(_))) => {}
                        Ok(Some(ClientMessage::Decisions(b))) => {
                            inner.batches.lock().expect("lock").push((b.source.clone(), b.seq));
                            let ack = *inner.ack.lock().expect("lock");
                            if ack && tx.send(Ok(ServerMessage::DecisionsAck { seq: b.seq })).await.is_err() {
                                return;
                            }
                        }
                        _ => return,
                    },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Operator {
    fake: Fake,
    addr: SocketAddr,
    pki: pki::Pki,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Operator {
    fn new(dir: &Path) -> Operator {
        let pki = pki::write(dir, &["localhost"]).expect("pki");
        // A free port, kept for restarts.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        Operator {
            fake: Fake::default(),
            addr,
            pki,
            running: None,
        }
    }

    async fn start(&mut self) {
        let cert = std::fs::read_to_string(&self.pki.cert).expect("cert");
        let key = std::fs::read_to_string(&self.pki.key).expect("key");
        let (stop_tx, stop_rx) = oneshot::channel();
        let svc = DistributorServer::new(self.fake.clone());
        let addr = self.addr;
        // The same port again: wait until the previous listener is gone.
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let listener = listener.expect("rebind the operator port");
        let handle = tokio::spawn(async move {
            let _ = Server::builder()
                .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
                .expect("tls")
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stop_rx.await;
                    },
                )
                .await;
        });
        self.running = Some((stop_tx, handle));
    }

    /// Stops serving: streams end, the port closes.
    async fn stop(&mut self) {
        // Streams first (the spawned sessions end when the desired channel goes),
        // then the listener.
        if let Some(tx) = self.fake.inner.desired.lock().expect("lock").take() {
            drop(tx);
        }
        if let Some((stop, handle)) = self.running.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(WAIT, handle).await;
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
}

/// Records what it is asked to apply; fails the versions listed in `fail`;
/// takes `slow` per apply.
#[derive(Clone, Default)]
struct Recorder {
    applied: Arc<Mutex<Vec<(String, u64)>>>,
    fail: Arc<Mutex<Vec<u64>>>,
    started: Arc<Mutex<Vec<u64>>>,
    slow: Duration,
}

impl Applier for Recorder {
    fn apply(&mut self, state: &NodeRuleSet) -> Result<Vec<RuleError>, String> {
        self.started.lock().expect("lock").push(state.version);
        std::thread::sleep(self.slow);
        if self.fail.lock().expect("lock").contains(&state.version) {
            return Err(format!("injected failure for version {}", state.version));
        }
        self.applied
            .lock()
            .expect("lock")
            .push((state.node.clone(), state.version));
        Ok(vec![RuleError {
            policy: "NetworkPolicy default/web".into(),
            direction: "ingress".into(),
            rule: 0,
            reason: "domainNames cannot be enforced".into(),
        }])
    }
}

impl Recorder {
    fn versions(&self) -> Vec<u64> {
        self.applied
            .lock()
            .expect("lock")
            .iter()
            .map(|a| a.1)
            .collect()
    }
}

struct Agent {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Agent {
    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("agent stops in time")
            .expect("agent task");
    }

    fn saw(&self, key: &str, value: &str) -> bool {
        self.lines
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.get(key).and_then(|v| v.as_str()) == Some(value))
    }
}

fn config(op: &Operator, dir: &Path, node: &str, token: &str) -> AgentConfig {
    let token_file = dir.join(format!("{node}.token"));
    std::fs::write(&token_file, format!("{token}\n")).expect("token");
    let mut c = AgentConfig::new(&op.url(), node, token_file, op.pki.ca.clone());
    c.server_name = Some("localhost".into());
    c.state_file = dir.join(format!("state/{node}.json"));
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.connect_timeout = Duration::from_secs(2);
    c.keepalive = Duration::from_secs(1);
    c.keepalive_timeout = Duration::from_secs(1);
    c
}

fn start_agent(config: AgentConfig, applier: Recorder) -> Agent {
    let (stop, stop_rx) = watch::channel(false);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let emit: Emit = Arc::new(move |v| sink.lock().expect("lock").push(v));
    let handle = tokio::spawn(async move {
        run_agent(config, applier, emit, stop_rx)
            .await
            .expect("agent runs");
    });
    Agent {
        stop,
        handle,
        lines,
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn state_file(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("state/{node}.json"))
}

#[tokio::test]
async fn applies_snapshots_and_updates_and_reports_them() {
    let dir = tempfile_dir("apply");
    let mut op = Operator::new(&dir);
    op.start().await;
    op.fake.publish(state("n1", 1, "10.0.0.1"));
    let rec = Recorder::default();
    let agent = start_agent(config(&op, &dir, "n1", "tok-1"), rec.clone());
    wait_for("version 1 applied", || rec.versions() == [1]).await;
    wait_for("version 1 reported", || {
        op.fake.reports().iter().any(|r| r.version == 1)
    })
    .await;
    let report = op.fake.reports()[0].clone();
    assert_eq!(report.digest, digest(&state("n1", 1, "10.0.0.1")));
    assert_eq!(
        report.error_lines(),
        vec!["NetworkPolicy default/web ingress rule 0: domainNames cannot be enforced"]
    );
    assert_eq!(op.fake.hellos()[0].node, "n1");
    assert_eq!(op.fake.hellos()[0].applied, None);
    assert_eq!(
        op.fake.inner.tokens.lock().expect("lock").clone(),
        vec!["tok-1"]
    );

    op.fake.publish(state("n1", 2, "10.0.0.2"));
    wait_for("version 2 applied", || rec.versions() == [1, 2]).await;
    wait_for("version 2 reported", || {
        op.fake.reports().iter().any(|r| r.version == 2)
    })
    .await;
    // The applied state is kept on disk.
    let kept: NodeRuleSet =
        serde_json::from_slice(&std::fs::read(state_file(&dir, "n1")).expect("state file"))
            .expect("parses");
    assert_eq!(kept.version, 2);
    agent.stop().await;
    op.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn keeps_the_rules_and_reconnects_with_backoff_while_the_operator_is_down() {
    let dir = tempfile_dir("outage");
    let mut op = Operator::new(&dir);
    op.start().await;
    op.fake.publish(state("n1", 1, "10.0.0.1"));
    let rec = Recorder::default();
    let agent = start_agent(config(&op, &dir, "n1", "tok-1"), rec.clone());
    wait_for("version 1 applied", || rec.versions() == [1]).await;

    // The operator goes away: nothing is applied (no flush, no allow-all), the
    // agent keeps trying.
    op.stop().await;
    wait_for("the agent notices", || agent.saw("stream", "down")).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        rec.versions(),
        [1],
        "nothing applied while the operator is down"
    );
    let downs: Vec<u64> = agent
        .lines
        .lock()
        .expect("lock")
        .iter()
        .filter(|l| l.get("stream").and_then(|v| v.as_str()) == Some("down"))
        .filter_map(|l| l.get("retry_in_ms").and_then(|v| v.as_u64()))
        .collect();
    assert!(downs.len() >= 3, "retried: {downs:?}");
    assert!(downs.iter().all(|d| *d <= 200), "capped: {downs:?}");
    assert!(agent
        .lines
        .lock()
        .expect("lock")
        .iter()
        .filter(|l| l.get("stream").is_some())
        .all(|l| l.get("in_force").is_none() || l.get("in_force") == Some(&serde_json::json!(1))));

    // Back, with a new rule set: the agent resumes (its hello says version 1).
    op.start().await;
    op.fake.publish(state("n1", 2, "10.0.0.2"));
    wait_for("version 2 applied", || rec.versions() == [1, 2]).await;
    let hellos = op.fake.hellos();
    let last = hellos.last().expect("a hello");
    assert_eq!(last.applied.as_ref().map(|a| a.version), Some(1));
    agent.stop().await;
    op.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_restarted_agent_applies_its_state_file_first_and_resumes() {
    let dir = tempfile_dir("restart");
    let mut op = Operator::new(&dir);
    op.start().await;
    op.fake.publish(state("n1", 3, "10.0.0.3"));
    let rec = Recorder::default();
    let agent = start_agent(config(&op, &dir, "n1", "tok-1"), rec.clone());
    wait_for("version 3 applied", || rec.versions() == [3]).await;
    agent.stop().await;

    // Restart while the operator is down: the kept rules are applied at once.
    op.stop().await;
    let rec2 = Recorder::default();
    let agent = start_agent(config(&op, &dir, "n1", "tok-1"), rec2.clone());
    wait_for("state file applied", || rec2.versions() == [3]).await;

    // The operator comes back (a new process: it numbers the same rules 1). The
    // hello carries the digest, so nothing is sent again: only the number.
    op.start().await;
    op.fake.publish(state("n1", 1, "10.0.0.3"));
    wait_for("realised version reported", || {
        op.fake.reports().iter().any(|r| r.version == 1)
    })
    .await;
    assert_eq!(
        rec2.versions(),
        [3],
        "the same rules were not applied again"
    );
    assert_eq!(
        op.fake
            .inner
            .sent_first
            .lock()
            .expect("lock")
            .last()
            .cloned(),
        Some("current".to_string())
    );
    let kept: NodeRuleSet =
        serde_json::from_slice(&std::fs::read(state_file(&dir, "n1")).expect("state file"))
            .expect("parses");
    assert_eq!(
        kept.version, 1,
        "the state file follows the operator's numbering"
    );
    agent.stop().await;
    op.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn refusals_keep_the_rules_and_are_retried() {
    let dir = tempfile_dir("refused");
    let mut op = Operator::new(&dir);
    // Rules from an earlier run are in force.
    std::fs::create_dir_all(dir.join("state")).expect("dir");
    std::fs::write(
        state_file(&dir, "n1"),
        serde_json::to_vec(&state("n1", 5, "10.0.0.5")).expect("json"),
    )
    .expect("state");
    *op.fake.inner.refuse.lock().expect("lock") = Some(Status::permission_denied(
        "asks for node n1, but its pod runs on node n2",
    ));
    op.start().await;
    op.fake.publish(state("n1", 6, "10.0.0.6"));
    let rec = Recorder::default();
    let agent = start_agent(config(&op, &dir, "n1", "tok-1"), rec.clone());
    wait_for("refused a few times", || op.fake.attempts().len() >= 3).await;
    assert_eq!(rec.versions(), [5], "only the kept rules are in force");
    assert!(agent.saw("code", "PermissionDenied"));
    let attempts = op.fake.attempts();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(15)),
        "{gaps:?}"
    );

    *op.fake.inner.refuse.lock().expect("lock") = None;
    wait_for("version 6 applied", || rec.versions() == [5, 6]).await;
    agent.stop().await;
    op.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_failed_apply_keeps_the_previous_rules_reports_and_retries() {
    let dir = tempfile_dir("failed");
    let mut op = Operator::new(&dir);
    op.start().await;
    op.fake.publish(state("n1", 1, "10.0.0.1"));
    let rec = Recorder::default();
    rec.fail.lock().expect("lock").push(2);
    let agent = start_agent(config(&op, &dir, "n1", "tok-1"), rec.clone());
    wait_for("version 1 applied", || rec.versions() == [1]).await;
    op.fake.publish(state("n1", 2, "10.0.0.2"));
    wait_for("the failure reported", || {
        op.fake
            .reports()
            .iter()
            .any(|r| r.failed.as_ref().map(|f| f.version) == Some(2))
    })
    .await;
    let r = op
        .fake
        .reports()
        .into_iter()
        .find(|r| r.failed.is_some())
        .expect("failure report");
    assert_eq!(r.version, 1, "version 1 stays in force");
    // The kernel recovers: the retry applies it.
    rec.fail.lock().expect("lock").clear();
    wait_for("version 2 applied on retry", || rec.versions() == [1, 2]).await;
    wait_for("version 2 reported", || {
        op.fake
            .reports()
            .iter()
            .any(|r| r.version == 2 && r.failed.is_none())
    })
    .await;
    agent.stop().await;
    op.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn never_applies_another_nodes_rules() {
    let dir = tempfile_dir("othernode");
    let mut op = Operator::new(&dir);
    op.start().await;
    op.fake.publish(state("n2", 1, "10.0.0.1"));
    let rec = Recorder::default();
    let agent = start_agent(config(&op, &dir, "n1", "tok-1"), rec.clone());
    wait_for("the refusal logged", || {
        agent.lines.lock().expect("lock").iter().any(|l| {
            l.get("error")
                .and_then(|e| e.as_str())
                .is_some_and(|e| e.contains("rules of node n2"))
        })
    })
    .await;
    assert!(rec.versions().is_empty());
    agent.stop().await;
    op.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pal-agent-{name}-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    let dir = PathBuf::from(dir.to_string_lossy().replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '/' && c != '-',
        "_",
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn a_stop_during_an_apply_lets_it_finish_and_keeps_its_state() {
    let dir = tempfile_dir("stopmid");
    let mut op = Operator::new(&dir);
    op.start().await;
    op.fake.publish(state("n1", 1, "10.0.0.1"));
    let rec = Recorder {
        slow: Duration::from_millis(400),
        ..Recorder::default()
    };
    let agent = start_agent(config(&op, &dir, "n1", "tok-1"), rec.clone());
    wait_for("the apply started", || {
        !rec.started.lock().expect("lock").is_empty()
    })
    .await;
    agent.stop().await;
    assert_eq!(rec.versions(), [1], "the apply in progress finished");
    let kept: NodeRuleSet =
        serde_json::from_slice(&std::fs::read(state_file(&dir, "n1")).expect("state file written"))
            .expect("parses");
    assert_eq!(kept.version, 1);
    op.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn decision_batches_are_sent_resent_after_a_reconnect_and_released_on_ack() {
    use palisade_enforcer::audit::Spool;
    use palisade_wire::audit::{AuditDirection, Decision, Verdict};
    let dir = tempfile_dir("audit-batches");
    let mut op = Operator::new(&dir);
    op.fake.publish(state("n1", 1, "192.0.2.1"));
    op.start().await;
    let spool = Arc::new(Spool::open(&dir.join("spool"), "n1", 1 << 20).expect("spool"));
    let decision = |count| Decision {
        first_seen_ms: 1,
        last_seen_ms: 2,
        count,
        node: "n1".into(),
        direction: AuditDirection::Ingress,
        verdict: Verdict::Allow,
        protocol: "tcp".into(),
        src_ip: "10.0.0.1".parse().expect("ip"),
        src_port: None,
        dst_ip: "10.0.0.2".parse().expect("ip"),
        dst_port: Some(80),
        src: None,
        dst: None,
        rule_id: "P1R0I".into(),
        tier: "networkpolicy".into(),
        policy: Some("NetworkPolicy default/web".into()),
        rule_index: Some(0),
        rule_name: None,
        isolated_by: vec![],
    };
    for n in 1..=3 {
        spool.append(vec![decision(n)], vec![]).expect("spooled");
    }
    let mut c = config(&op, &dir, "n1", "t");
    c.audit = Some(Arc::clone(&spool));
    let agent = start_agent(c, Recorder::default());
    let source = spool.source().to_string();
    let seqs = |op: &Operator| -> Vec<u64> {
        op.fake
            .inner
            .batches
            .lock()
            .expect("lock")
            .iter()
            .map(|b| b.1)
            .collect()
    };
    // Not acknowledged: sent once, kept.
    wait_for("three batches", || seqs(&op) == vec![1, 2, 3]).await;
    assert!(op
        .fake
        .inner
        .batches
        .lock()
        .expect("lock")
        .iter()
        .all(|b| b.0 == source));
    assert_eq!(spool.pending().0, 3);
    // The operator goes and comes back acknowledging: all three again, then released.
    op.stop().await;
    *op.fake.inner.ack.lock().expect("lock") = true;
    op.fake.publish(state("n1", 1, "192.0.2.1"));
    op.start().await;
    wait_for("resent", || seqs(&op) == vec![1, 2, 3, 1, 2, 3]).await;
    wait_for("released", || spool.pending().0 == 0).await;
    assert_eq!(spool.acked(), 3);
    // A new batch goes out at once and is released too.
    assert_eq!(spool.append(vec![decision(9)], vec![]).expect("spooled"), 4);
    wait_for("the new batch", || seqs(&op).last() == Some(&4)).await;
    wait_for("released", || spool.pending().0 == 0).await;
    agent.stop().await;
    op.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
