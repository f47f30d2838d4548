//! The ingest: one task that writes decision batches in the order they came, and tells
//! each batch's stream once it is committed, so the stream acknowledges it.
//!
//! ```text
//!   stream session ──submit(batch)──► queue ──► attribute ends ──► write (retry with backoff)
//!         ▲                                                              │ committed
//!         └────────────────────────── seq (oneshot) ◄────────────────────┘
//! ```
//!
//! While the database is down the batch at the head is retried with backoff (each failure
//! counted in `palisade_audit_write_failures_total`) and nothing behind it is written or
//! acknowledged: the enforcers keep their batches spooled and send them again on their next
//! stream; the store skips what it already holds. Only the leader writes: a replica that
//! lost the lead drops its queue unacknowledged and closes the store until it leads again.

use std::sync::Arc;
use std::time::Duration;

use palisade_audit::{now_ms, AuditError, AuditStore, WriteOutcome};
use palisade_wire::audit::{DecisionBatch, Gap};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::metrics::AuditMetrics;
use super::pod_ips::PodIps;
use crate::hub::Hub;

/// Batches the queue holds before streams are asked to back off.
pub const QUEUE: usize = 1024;

/// Decisions written in one transaction at most: the queue is drained up to this.
const GROUP_DECISIONS: usize = 20_000;

/// Retry delays after a failed write or connection: doubling from `first` up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// How a write ended.
enum Written {
    /// Committed: one outcome per batch.
    Stored(Vec<WriteOutcome>),
    /// The same input would fail again.
    Rejected(AuditError),
    /// Not leading or shutting down: left unanswered.
    Stopped,
}

/// The store once it is open (`None` before: opening is retried like a write).
pub type StoreSlot = watch::Receiver<Option<Arc<dyn AuditStore>>>;

struct Job {
    batch: DecisionBatch,
    done: oneshot::Sender<u64>,
}

/// Where stream sessions hand their batches. Clones share the queue.
#[derive(Clone, Debug)]
pub struct Ingest {
    tx: mpsc::Sender<Job>,
    metrics: AuditMetrics,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} #{})", self.batch.source, self.batch.seq)
    }
}

/// The queue is full: the stream should end so its enforcer sends the batch again later.
#[derive(Debug, thiserror::Error)]
#[error("the audit ingest queue is full")]
pub struct Backlogged;

impl Ingest {
    /// Queues `batch`; the receiver yields its `seq` once it is committed (and is dropped
    /// unanswered if this replica stops leading or shuts down first).
    pub fn submit(&self, batch: DecisionBatch) -> Result<oneshot::Receiver<u64>, Backlogged> {
        let (done, rx) = oneshot::channel();
        match self.tx.try_send(Job { batch, done }) {
            Ok(()) => {
                self.metrics.pending.inc();
                Ok(rx)
            }
            Err(_) => {
                self.metrics.backlog_full.inc();
                Err(Backlogged)
            }
        }
    }
}

/// Everything the ingest task needs.
pub struct IngestTask {
    pub url: String,
    pub pod_ips: PodIps,
    pub hub: Arc<Hub>,
    pub metrics: AuditMetrics,
    pub backoff: Backoff,
    pub shutdown: CancellationToken,
}

impl IngestTask {
    /// Starts the task: returns the handle for streams, the store (once open, for the
    /// query API and retention) and the task.
    pub fn spawn(self) -> (Ingest, StoreSlot, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (store_tx, store_rx) = watch::channel(None);
        let ingest = Ingest {
            tx,
            metrics: self.metrics.clone(),
        };
        let task = tokio::spawn(self.run(rx, store_tx));
        (ingest, store_rx, task)
    }

    async fn run(
        self,
        mut jobs: mpsc::Receiver<Job>,
        store_tx: watch::Sender<Option<Arc<dyn AuditStore>>>,
    ) {
        // Each term of leadership opens the store and closes it when the lead is lost, so
        // only the leader answers the query API (the slot is empty elsewhere: 503).
        loop {
            let Some(store) = self.open().await else {
                return;
            };
            store_tx.send_replace(Some(Arc::clone(&store)));
            let lead_lost = self.serve(store.as_ref(), &mut jobs).await;
            store_tx.send_replace(None);
            store.close().await;
            if !lead_lost {
                return;
            }
            // Their streams end on the lead loss too: the enforcers send them to the leader.
            while let Ok(job) = jobs.try_recv() {
                self.metrics.pending.dec();
                drop(job);
            }
            tracing::info!("audit log: lead lost; database closed, queue dropped");
        }
    }

    /// Writes queued batches until shutdown (false) or until this replica stops leading
    /// (true).
    async fn serve(&self, store: &dyn AuditStore, jobs: &mut mpsc::Receiver<Job>) -> bool {
        let mut leading = self.hub.leadership();
        loop {
            let job = tokio::select! {
                () = self.shutdown.cancelled() => return false,
                r = leading.changed() => {
                    if r.is_err() {
                        return false;
                    }
                    if !*leading.borrow_and_update() {
                        return true;
                    }
                    continue;
                }
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => return false,
                },
            };
            // Group commit: every batch already waiting goes into the same transaction. The
            // batch that crosses the limit is still taken, so a group holds fewer than
            // GROUP_DECISIONS plus one batch's decisions.
            let mut group = vec![job];
            let mut decisions = group[0].batch.decisions.len();
            while decisions < GROUP_DECISIONS {
                let Ok(next) = jobs.try_recv() else { break };
                decisions += next.batch.decisions.len();
                group.push(next);
            }
            self.metrics.pending.dec_by(group.len() as i64);
            self.handle_group(store, group).await;
        }
    }

    /// Opens the database once this replica leads (opening migrates: a write), retrying
    /// transient failures with backoff (the operator serves rules meanwhile). A URL or
    /// schema that can never work gives up: logged as an error and counted in
    /// `palisade_audit_open_failed_total`; the audit log stays off until a restart.
    async fn open(&self) -> Option<Arc<dyn AuditStore>> {
        let mut leading = self.hub.leadership();
        while !*leading.borrow_and_update() {
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                r = leading.changed() => if r.is_err() { return None },
            }
        }
        let mut delay = self.backoff.first;
        let shown = palisade_audit::redact(&self.url);
        loop {
            match palisade_audit::open(&self.url).await {
                Ok(store) => {
                    tracing::info!(database = %shown, "audit log: database open and migrated");
                    return Some(store);
                }
                Err(e) if e.is_transient() => {
                    self.metrics.write_failures.inc();
                    tracing::warn!(database = %shown, error = %e, retry_ms = delay.as_millis() as u64,
                        "audit log: cannot open the database; retrying");
                }
                Err(e) => {
                    self.metrics.open_failed.inc();
                    tracing::error!(database = %shown, error = %e,
                        "audit log: the database cannot be opened and retrying cannot help; \
                         the audit log is OFF until the setting is fixed and the operator restarted");
                    return None;
                }
            }
            if !self.pause(&mut delay).await {
                return None;
            }
        }
    }

    /// Writes batches in one transaction; answers each stream once committed. When one
    /// batch cannot be stored at all, each is written alone, so only that one becomes a gap.
    async fn handle_group(&self, store: &dyn AuditStore, group: Vec<Job>) {
        let (mut batches, dones): (Vec<DecisionBatch>, Vec<oneshot::Sender<u64>>) =
            group.into_iter().map(|j| (j.batch, j.done)).unzip();
        for batch in &mut batches {
            self.pod_ips.attribute(batch);
        }
        if batches.len() > 1 {
            match self.write(store, &batches).await {
                Written::Stored(outcomes) => {
                    for ((batch, done), out) in batches.iter().zip(dones).zip(outcomes) {
                        self.stored(batch, &out, batch.seq, done);
                    }
                    return;
                }
                Written::Stopped => return,
                Written::Rejected(_) => {}
            }
        }
        for (batch, done) in batches.into_iter().zip(dones) {
            self.handle(store, batch, done).await;
        }
    }

    /// Writes one (attributed) batch; answers its stream once committed. A batch the store
    /// refuses is stored as a gap; when even that gap is refused (it carries the same
    /// source), the batch is logged, counted and acknowledged so the queue moves on.
    async fn handle(
        &self,
        store: &dyn AuditStore,
        batch: DecisionBatch,
        done: oneshot::Sender<u64>,
    ) {
        let seq = batch.seq;
        let e = match self.write(store, std::slice::from_ref(&batch)).await {
            Written::Stored(out) => return self.stored_one(&batch, &out, seq, done),
            Written::Stopped => return,
            Written::Rejected(e) => e,
        };
        self.metrics.rejected.inc();
        tracing::error!(source = %batch.source, seq = batch.seq, error = %e,
            "audit log: batch rejected; recorded as a gap");
        let gap = rejection(&batch, &e);
        match self.write(store, std::slice::from_ref(&gap)).await {
            Written::Stored(out) => self.stored_one(&gap, &out, seq, done),
            Written::Stopped => {}
            Written::Rejected(e) => {
                tracing::error!(source = %batch.source, seq = batch.seq, error = %e,
                    "audit log: batch and its gap both rejected; dropped and acknowledged");
                let _ = done.send(seq);
            }
        }
    }

    fn stored_one(
        &self,
        batch: &DecisionBatch,
        outcomes: &[WriteOutcome],
        seq: u64,
        done: oneshot::Sender<u64>,
    ) {
        match outcomes.first() {
            Some(out) => self.stored(batch, out, seq, done),
            None => tracing::error!(source = %batch.source, seq = batch.seq,
                "audit log: the store answered no outcome for a batch"),
        }
    }

    /// Writes `batches` in one transaction while this replica leads, retrying transient
    /// failures with backoff (each counted in `palisade_audit_write_failures_total`).
    async fn write(&self, store: &dyn AuditStore, batches: &[DecisionBatch]) -> Written {
        let mut delay = self.backoff.first;
        loop {
            if !self.hub.is_leader() {
                tracing::debug!(
                    batches = batches.len(),
                    "not leading: batches left to the leader"
                );
                return Written::Stopped;
            }
            match store.write_batches(batches, now_ms()).await {
                Ok(outcomes) => return Written::Stored(outcomes),
                Err(e) if e.is_transient() => {
                    self.metrics.write_failures.inc();
                    tracing::warn!(batches = batches.len(), error = %e,
                        retry_ms = delay.as_millis() as u64, "audit log: write failed; retrying");
                    if !self.pause(&mut delay).await {
                        return Written::Stopped;
                    }
                }
                Err(e) => return Written::Rejected(e),
            }
        }
    }

    /// A batch committed: counted, and its stream told that `seq` is stored.
    fn stored(
        &self,
        batch: &DecisionBatch,
        out: &WriteOutcome,
        seq: u64,
        done: oneshot::Sender<u64>,
    ) {
        self.metrics.stored.inc_by(out.decisions);
        self.metrics.gaps.inc_by(out.gaps);
        self.metrics.duplicates.inc_by(out.duplicates);
        tracing::debug!(source = %batch.source, seq = batch.seq, stored = out.decisions,
            duplicates = out.duplicates, "decision batch stored");
        let _ = done.send(seq);
    }

    /// Sleeps `delay` (then doubles it); false when shutting down.
    async fn pause(&self, delay: &mut Duration) -> bool {
        let wait = *delay;
        *delay = (*delay * 2).min(self.backoff.max);
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }
}

/// What a batch that cannot be stored becomes: one gap with everything it carried (its
/// decisions' counts and its gaps' losses) and the reason, under the same source and seq
/// (so sending it again is still stored once).
pub fn rejection(batch: &DecisionBatch, error: &AuditError) -> DecisionBatch {
    let clean = |s: &str| s.replace('\0', "\u{FFFD}");
    let node = batch
        .decisions
        .first()
        .map(|d| d.node.as_str())
        .or_else(|| batch.gaps.first().map(|g| g.node.as_str()))
        .unwrap_or_else(|| batch.source.split('/').next().unwrap_or(""));
    let lost = batch
        .decisions
        .iter()
        .map(|d| d.count)
        .chain(batch.gaps.iter().map(|g| g.lost))
        .fold(0u64, u64::saturating_add)
        .min(i64::MAX as u64);
    let times = batch
        .decisions
        .iter()
        .flat_map(|d| [d.first_seen_ms, d.last_seen_ms])
        .chain(batch.gaps.iter().flat_map(|g| [g.from_ms, g.to_ms]));
    let (from_ms, to_ms) = times.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let (from_ms, to_ms) = if from_ms > to_ms {
        (0, 0)
    } else {
        (from_ms, to_ms)
    };
    DecisionBatch {
        source: clean(&batch.source),
        seq: batch.seq.min(i64::MAX as u64),
        decisions: Vec::new(),
        gaps: vec![Gap {
            node: clean(node),
            from_ms,
            to_ms,
            lost,
            reason: clean(&format!("rejected by the operator: {error}")),
        }],
    }
}
