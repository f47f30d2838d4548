//! The stream client (`palisade-enforcer agent`): follows this node's rule set
//! on the operator's stream (`palisade_wire`), applies each one, and reports back.
//!
//! ```text
//!   operator ══ TLS, bearer token ══► connection task ──(latest state)──► apply task ──► Applier (kernel)
//!            ◄════════ Report ═══════                  ◄──(latest report)──      │
//!                                                                          state file (last applied)
//! ```
//!
//! Failure behaviour: the rules in force are never taken away. When the operator
//! cannot be reached, refuses, or the stream breaks, the last applied rules stay
//! (no flush, no allow-all, no deny-all) and the agent reconnects with capped,
//! jittered exponential backoff ([`Backoff`]). Every successfully applied rule set
//! is written to a local state file; a restarted agent applies that file first,
//! before the operator answers, and tells the operator what it has (version and
//! digest) so an unchanged rule set is not sent again. A state that fails to apply
//! leaves the previous one in force and is retried.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_policy::compiled::NodeRuleSet;
use palisade_wire::{
    bearer, digest, Applied, ClientMessage, DistributorClient, Failure, Hello, Report, RuleError,
    ServerMessage, MAX_MESSAGE_BYTES,
};
use serde_json::json;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::audit::Spool;

/// Applies rule sets (the kernel in production, a recorder in tests). Called on a
/// blocking thread, one call at a time.
pub trait Applier: Send + 'static {
    /// Applies `state`; Ok with the rules enforced fail-closed. On Err the rules
    /// in force before stay.
    fn apply(&mut self, state: &NodeRuleSet) -> Result<Vec<RuleError>, String>;
    /// Checks that what was applied is still in place; Err: apply again.
    fn check(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Where the agent reports what happens (JSON lines on stdout in the binary).
pub type Emit = Arc<dyn Fn(serde_json::Value) + Send + Sync>;

/// How to reach the operator and what to follow.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// `https://HOST:PORT` of the operator's stream.
    pub operator: String,
    pub node: String,
    /// The projected ServiceAccount token (re-read for every connection, so
    /// rotated tokens are picked up).
    pub token_file: PathBuf,
    /// The CA that signs the operator's certificate (re-read for every connection).
    pub ca_file: PathBuf,
    /// The name to check the operator's certificate against (default: the URL's host).
    pub server_name: Option<String>,
    /// Where the last applied rule set is kept.
    pub state_file: PathBuf,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// HTTP/2 pings: a dead operator is noticed after `keepalive` + `keepalive_timeout`.
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
    /// How often to check that the applied rules are still in place.
    pub check_interval: Duration,
    /// The audit spool whose batches go to the operator (`None`: audit off).
    pub audit: Option<Arc<Spool>>,
}

impl AgentConfig {
    pub fn new(operator: &str, node: &str, token_file: PathBuf, ca_file: PathBuf) -> Self {
        AgentConfig {
            operator: operator.to_string(),
            node: node.to_string(),
            token_file,
            ca_file,
            server_name: None,
            state_file: PathBuf::from(format!("/var/lib/palisade/{node}.json")),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            check_interval: Duration::from_secs(5),
            audit: None,
        }
    }
}

/// Errors of the agent that stop it (everything else is retried).
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("operator URL {url}: {reason}")]
    Url { url: String, reason: String },
}

/// Capped exponential backoff with full jitter: the n-th delay is uniform in
/// `[min, min(max, min * 2^n)]`.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            ^ (u64::from(std::process::id()) << 32);
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let span = ceiling.saturating_sub(self.min).as_micros() as u64;
        let jitter = if span == 0 { 0 } else { r % (span + 1) };
        self.min + Duration::from_micros(jitter)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Reads a persisted rule set (`None` when there is none or it does not parse:
/// then the operator's snapshot is awaited).
pub fn load_state(path: &Path) -> Result<Option<NodeRuleSet>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes a rule set atomically (write, fsync, rename).
pub fn save_state(path: &Path, state: &NodeRuleSet) -> Result<(), String> {
    use std::io::Write as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec(state).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// What is in force on the node.
#[derive(Debug, Default)]
struct Status {
    /// The last rule set applied successfully, its digest, its rules enforced
    /// fail-closed.
    state: Option<Arc<NodeRuleSet>>,
    digest: String,
    rule_errors: Vec<RuleError>,
    /// The last state that failed to apply (cleared by a success).
    failed: Option<Failure>,
}

impl Status {
    fn applied(&self) -> Option<Applied> {
        self.state.as_ref().map(|s| Applied {
            version: s.version,
            digest: self.digest.clone(),
        })
    }

    fn report(&self) -> Report {
        Report {
            version: self.state.as_ref().map_or(0, |s| s.version),
            digest: self.digest.clone(),
            rule_errors: self.rule_errors.clone(),
            failed: self.failed.clone(),
        }
    }
}

struct Shared<A> {
    config: AgentConfig,
    applier: Arc<Mutex<A>>,
    status: Mutex<Status>,
    emit: Emit,
}

impl<A> Shared<A> {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the agent until `stop` turns true: applies the persisted state, then
/// follows the operator's stream. The rules in force stay when it returns.
pub async fn run_agent<A: Applier>(
    config: AgentConfig,
    applier: A,
    emit: Emit,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    Endpoint::from_shared(config.operator.clone()).map_err(|e| AgentError::Url {
        url: config.operator.clone(),
        reason: e.to_string(),
    })?;
    let shared = Arc::new(Shared {
        config,
        applier: Arc::new(Mutex::new(applier)),
        status: Mutex::new(Status::default()),
        emit,
    });
    let (desired_tx, desired_rx) = watch::channel::<Option<Arc<NodeRuleSet>>>(None);
    let (report_tx, report_rx) = watch::channel::<Option<Report>>(None);

    // The rules of the last run first, before the operator is asked.
    match load_state(&shared.config.state_file) {
        Ok(Some(state)) => {
            (shared.emit)(json!({"restoring": shared.config.state_file, "version": state.version}));
            apply_one(&shared, Arc::new(state), &report_tx).await;
        }
        Ok(None) => {}
        Err(e) => (shared.emit)(json!({"error": format!("ignoring the state file: {e}")})),
    }

    let mut applying = tokio::spawn(apply_loop(
        Arc::clone(&shared),
        desired_rx,
        report_tx,
        stop.clone(),
    ));
    let following = connection_loop(Arc::clone(&shared), desired_tx, report_rx, stop.clone());
    tokio::select! {
        () = following => {}
        _ = wait_stop(&mut stop) => {}
    }
    // An apply in progress finishes (and its rule set is saved, so a restart
    // re-applies what is in the kernel); the apply loop then sees the stop.
    if tokio::time::timeout(Duration::from_secs(60), &mut applying)
        .await
        .is_err()
    {
        applying.abort();
    }
    Ok(())
}

async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Applies one state on a blocking thread and records the outcome. Returns
/// whether it was applied.
async fn apply_one<A: Applier>(
    shared: &Arc<Shared<A>>,
    state: Arc<NodeRuleSet>,
    report_tx: &watch::Sender<Option<Report>>,
) -> bool {
    let applier = Arc::clone(&shared.applier);
    let to_apply = Arc::clone(&state);
    let result = tokio::task::spawn_blocking(move || {
        let mut a = applier.lock().unwrap_or_else(|e| e.into_inner());
        a.apply(&to_apply)
    })
    .await
    .unwrap_or_else(|e| Err(format!("apply thread failed: {e}")));
    let ok = result.is_ok();
    let report = {
        let mut status = shared.status();
        match result {
            Ok(rule_errors) => {
                status.digest = digest(&state);
                status.state = Some(Arc::clone(&state));
                status.rule_errors = rule_errors;
                status.failed = None;
                (shared.emit)(json!({"realised": state.version, "digest": status.digest}));
            }
            Err(error) => {
                (shared.emit)(json!({"error": error, "version": state.version}));
                status.failed = Some(Failure {
                    version: state.version,
                    error,
                });
            }
        }
        status.report()
    };
    report_tx.send_replace(Some(report));
    if ok {
        if let Err(e) = save_state(&shared.config.state_file, &state) {
            (shared.emit)(json!({"error": format!("saving the applied state: {e}")}));
        }
    }
    ok
}

/// Applies the latest desired state whenever it changes; retries a failed one;
/// re-applies when the installed rules disappeared.
async fn apply_loop<A: Applier>(
    shared: Arc<Shared<A>>,
    mut desired: watch::Receiver<Option<Arc<NodeRuleSet>>>,
    report_tx: watch::Sender<Option<Report>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut retry = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut retry_at: Option<Instant> = None;
    let mut pending: Option<Arc<NodeRuleSet>> = None;
    let mut check = tokio::time::interval(shared.config.check_interval);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    loop {
        let retry_sleep = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let state = tokio::select! {
            biased;
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
                desired.borrow_and_update().clone()
            }
            () = retry_sleep => pending.clone(),
            _ = check.tick() => {
                let applier = Arc::clone(&shared.applier);
                let checked = tokio::task::spawn_blocking(move || {
                    applier.lock().unwrap_or_else(|e| e.into_inner()).check()
                })
                .await
                .unwrap_or_else(|e| Err(format!("check thread failed: {e}")));
                match checked {
                    Ok(()) => continue,
                    Err(e) => {
                        (shared.emit)(json!({"error": e}));
                        // Re-apply what should be in force: the pending state, else
                        // the applied one.
                        pending.clone().or_else(|| shared.status().state.clone())
                    }
                }
            }
        };
        let Some(state) = state else { continue };
        if apply_one(&shared, Arc::clone(&state), &report_tx).await {
            pending = None;
            retry_at = None;
            retry.reset();
        } else {
            pending = Some(state);
            retry_at = Some(Instant::now() + retry.next_delay());
        }
    }
}

/// Why a stream ended.
enum Ended {
    /// Something was received on it: the next attempt starts with a short delay.
    AfterService(String),
    /// Nothing was received (no connection, refused).
    Unserved(String),
    /// Reconnect at once (the answer did not match what is in force any more).
    Again,
}

async fn connection_loop<A: Applier>(
    shared: Arc<Shared<A>>,
    desired_tx: watch::Sender<Option<Arc<NodeRuleSet>>>,
    mut report_rx: watch::Receiver<Option<Report>>,
    mut stop: watch::Receiver<bool>,
) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    loop {
        let ended = session(&shared, &desired_tx, &mut report_rx).await;
        let reason = match ended {
            Ended::Again => continue,
            Ended::AfterService(reason) => {
                backoff.reset();
                reason
            }
            Ended::Unserved(reason) => reason,
        };
        let delay = backoff.next_delay();
        (shared.emit)(json!({
            "stream": "down",
            "reason": reason,
            "retry_in_ms": delay.as_millis() as u64,
            "in_force": shared.status().state.as_ref().map(|s| s.version),
        }));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// One stream: connect, hello, then apply what comes and report what is done.
async fn session<A: Applier>(
    shared: &Arc<Shared<A>>,
    desired_tx: &watch::Sender<Option<Arc<NodeRuleSet>>>,
    report_rx: &mut watch::Receiver<Option<Report>>,
) -> Ended {
    let config = &shared.config;
    let token = match std::fs::read_to_string(&config.token_file) {
        Ok(t) if !t.trim().is_empty() => t,
        Ok(_) => return Ended::Unserved(format!("{}: empty token", config.token_file.display())),
        Err(e) => return Ended::Unserved(format!("{}: {e}", config.token_file.display())),
    };
    let ca = match std::fs::read_to_string(&config.ca_file) {
        Ok(c) => c,
        Err(e) => return Ended::Unserved(format!("{}: {e}", config.ca_file.display())),
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(name) = &config.server_name {
        tls = tls.domain_name(name.clone());
    }
    let endpoint =
        match Endpoint::from_shared(config.operator.clone()).and_then(|e| e.tls_config(tls)) {
            Ok(e) => e,
            Err(e) => return Ended::Unserved(format!("operator endpoint: {e}")),
        };
    let endpoint = endpoint
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(config.keepalive)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true);
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            return Ended::Unserved(format!(
                "connecting to {}: {}",
                config.operator,
                error_chain(&e)
            ))
        }
    };
    let mut client = DistributorClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let (out_tx, out_rx) = mpsc::channel(8);
    let applied = shared.status().applied();
    let hello_digest = applied.as_ref().map(|a| a.digest.clone());
    let hello = Hello {
        node: config.node.clone(),
        applied,
        agent: env!("CARGO_PKG_VERSION").to_string(),
    };
    if out_tx.send(ClientMessage::Hello(hello)).await.is_err() {
        return Ended::Unserved("stream closed before the hello".to_string());
    }
    let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
    match bearer(&token).parse() {
        Ok(v) => {
            request.metadata_mut().insert("authorization", v);
        }
        Err(_) => {
            return Ended::Unserved(format!(
                "{}: the token is not a valid header value",
                config.token_file.display()
            ))
        }
    }
    let mut inbound = match client.follow(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            (shared.emit)(
                json!({"stream": "refused", "code": format!("{:?}", status.code()), "message": status.message()}),
            );
            return Ended::Unserved(describe(&status));
        }
    };
    (shared.emit)(json!({"stream": "up", "operator": config.operator}));
    // Reports from before this stream are not resent: the hello told the operator
    // what is in force.
    report_rx.borrow_and_update();
    // Decision batches: everything not acknowledged goes again, in order (the
    // operator stores each (source, seq) once).
    let spool = config.audit.clone();
    let mut sent = spool.as_ref().map_or(0, |s| s.acked());
    if let Some(spool) = &spool {
        if let Err(reason) = send_batches(spool, &mut sent, &out_tx).await {
            return Ended::Unserved(reason);
        }
    }
    let mut served = false;
    let end = |served: bool, reason: String| {
        if served {
            Ended::AfterService(reason)
        } else {
            Ended::Unserved(reason)
        }
    };
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(ServerMessage::Snapshot(state))) => {
                    served = true;
                    if state.node != config.node {
                        // Never apply another node's rules.
                        (shared.emit)(json!({"error": format!("the operator sent the rules of node {}, not {}; ignored", state.node, config.node)}));
                        continue;
                    }
                    (shared.emit)(json!({"received_version": state.version}));
                    desired_tx.send_replace(Some(state));
                }
                Ok(Some(ServerMessage::Current { version })) => {
                    served = true;
                    let report = {
                        let mut status = shared.status();
                        if status.applied().map(|a| a.digest) != hello_digest {
                            drop(status);
                            return Ended::Again;
                        }
                        let Some(state) = status.state.clone() else {
                            return Ended::Again;
                        };
                        if state.version != version {
                            let mut renumbered = (*state).clone();
                            renumbered.version = version;
                            let renumbered = Arc::new(renumbered);
                            if let Err(e) = save_state(&config.state_file, &renumbered) {
                                (shared.emit)(json!({"error": format!("saving the applied state: {e}")}));
                            }
                            status.state = Some(renumbered);
                        }
                        status.report()
                    };
                    (shared.emit)(json!({"current_version": version, "digest": report.digest}));
                    if out_tx.send(ClientMessage::Report(report)).await.is_err() {
                        return end(served, "stream closed".to_string());
                    }
                }
                Ok(Some(ServerMessage::DecisionsAck { seq })) => {
                    served = true;
                    if let Some(spool) = &spool {
                        if let Err(e) = spool.ack(seq) {
                            (shared.emit)(json!({"error": format!("releasing acknowledged decisions: {e}")}));
                        }
                    }
                }
                Ok(None) => return end(served, "the operator closed the stream".to_string()),
                Err(status) => return end(served, describe(&status)),
            },
            () = appended(spool.as_deref()) => {
                if let Some(spool) = &spool {
                    if let Err(reason) = send_batches(spool, &mut sent, &out_tx).await {
                        return end(served, reason);
                    }
                }
            }
            changed = report_rx.changed() => {
                if changed.is_err() {
                    return end(served, "agent stopping".to_string());
                }
                let report = report_rx.borrow_and_update().clone();
                if let Some(report) = report {
                    if out_tx.send(ClientMessage::Report(report)).await.is_err() {
                        return end(served, "stream closed".to_string());
                    }
                }
            }
        }
    }
}

/// Resolves when the spool has a new batch (never without a spool).
async fn appended(spool: Option<&Spool>) {
    match spool {
        Some(s) => s.appended().await,
        None => std::future::pending().await,
    }
}

/// Sends the spooled batches after `sent`, in order.
async fn send_batches(
    spool: &Spool,
    sent: &mut u64,
    out: &mpsc::Sender<ClientMessage>,
) -> Result<(), String> {
    // Bounded: at most what is spooled now (the spool is bounded).
    let (pending, _) = spool.pending();
    for _ in 0..pending {
        let batch = match spool.next_after(*sent) {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => return Err(format!("reading the audit spool: {e}")),
        };
        let seq = batch.seq;
        out.send(ClientMessage::Decisions(batch))
            .await
            .map_err(|_| "stream closed".to_string())?;
        *sent = seq;
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1600));
        let mut ceilings = Vec::new();
        for n in 0..10u32 {
            let d = b.next_delay();
            let ceiling = (100u64 << n.min(20)).min(1600);
            assert!(d >= Duration::from_millis(100), "{d:?}");
            assert!(
                d <= Duration::from_millis(ceiling),
                "{n}: {d:?} > {ceiling}"
            );
            ceilings.push(d);
        }
        // Jittered: not every delay after the first equals its ceiling.
        assert!(ceilings
            .iter()
            .skip(1)
            .any(|d| *d < Duration::from_millis(1600)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn state_files_round_trip() {
        let dir = std::env::temp_dir().join(format!("pal-agent-unit-{}", std::process::id()));
        let path = dir.join("n1.json");
        assert_eq!(load_state(&path), Ok(None));
        let state = NodeRuleSet {
            node: "n1".into(),
            version: 4,
            ..NodeRuleSet::default()
        };
        save_state(&path, &state).expect("saved");
        assert_eq!(load_state(&path), Ok(Some(state)));
        std::fs::write(&path, "{").expect("write");
        assert!(load_state(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
