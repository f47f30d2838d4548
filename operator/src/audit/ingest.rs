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
//! lost the lead drops its queue unacknowledged.

use std::sync::Arc;
use std::time::Duration;

use palisade_audit::{now_ms, AuditError, AuditStore, WriteOutcome};
use palisade_wire::audit::{DecisionBatch, Gap};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::metrics::AuditMetrics;
use super::pod_ips::{attribute, PodIps};
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
        let Some(store) = self.open().await else {
            return;
        };
        store_tx.send_replace(Some(Arc::clone(&store)));
        loop {
            let job = tokio::select! {
                () = self.shutdown.cancelled() => break,
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
            };
            // Group commit: every batch already waiting goes into the same transaction.
            let mut group = vec![job];
            let mut decisions = group[0].batch.decisions.len();
            while decisions < GROUP_DECISIONS {
                let Ok(next) = jobs.try_recv() else { break };
                decisions += next.batch.decisions.len();
                group.push(next);
            }
            self.metrics.pending.dec_by(group.len() as i64);
            self.handle_group(store.as_ref(), group).await;
        }
        store.close().await;
    }

    /// Opens the database once this replica leads (opening migrates: a write), retrying
    /// with backoff (the operator serves rules meanwhile).
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
                Err(e) => {
                    self.metrics.write_failures.inc();
                    tracing::warn!(database = %shown, error = %e, retry_ms = delay.as_millis() as u64,
                        "audit log: cannot open the database; retrying");
                }
            }
            if !self.pause(&mut delay).await {
                return None;
            }
        }
    }

    /// Writes batches in one transaction, retrying transient failures; answers each stream
    /// once committed. When one batch cannot be stored at all, each is written alone, so
    /// only that one becomes a gap.
    async fn handle_group(&self, store: &dyn AuditStore, group: Vec<Job>) {
        if group.len() == 1 {
            for job in group {
                self.handle(store, job).await;
            }
            return;
        }
        let ips = self.pod_ips.snapshot();
        let (mut batches, dones): (Vec<DecisionBatch>, Vec<oneshot::Sender<u64>>) =
            group.into_iter().map(|j| (j.batch, j.done)).unzip();
        for batch in &mut batches {
            attribute(batch, &ips);
        }
        let mut delay = self.backoff.first;
        loop {
            if !self.hub.is_leader() {
                tracing::debug!(
                    batches = batches.len(),
                    "not leading: batches left to the leader"
                );
                return;
            }
            match store.write_batches(&batches, now_ms()).await {
                Ok(outcomes) => {
                    for ((batch, done), out) in batches.iter().zip(dones).zip(outcomes) {
                        self.stored(batch, &out, batch.seq, done);
                    }
                    return;
                }
                Err(e) if e.is_transient() => {
                    self.metrics.write_failures.inc();
                    tracing::warn!(batches = batches.len(), error = %e,
                        retry_ms = delay.as_millis() as u64, "audit log: write failed; retrying");
                    if !self.pause(&mut delay).await {
                        return;
                    }
                }
                Err(_) => {
                    for (batch, done) in batches.into_iter().zip(dones) {
                        self.handle(store, Job { batch, done }).await;
                    }
                    return;
                }
            }
        }
    }

    /// Writes one batch, retrying transient failures; answers its stream once committed.
    async fn handle(&self, store: &dyn AuditStore, mut job: Job) {
        attribute(&mut job.batch, &self.pod_ips.snapshot());
        // The seq the stream waits for (a rejection's may be clamped).
        let seq = job.batch.seq;
        let mut delay = self.backoff.first;
        let mut batch = job.batch;
        loop {
            if !self.hub.is_leader() {
                tracing::debug!(source = %batch.source, seq = batch.seq, "not leading: batch left to the leader");
                return;
            }
            match store.write_batch(&batch, now_ms()).await {
                Ok(out) => {
                    self.stored(&batch, &out, seq, job.done);
                    return;
                }
                Err(e) if e.is_transient() => {
                    self.metrics.write_failures.inc();
                    tracing::warn!(source = %batch.source, seq = batch.seq, error = %e,
                        retry_ms = delay.as_millis() as u64, "audit log: write failed; retrying");
                    if !self.pause(&mut delay).await {
                        return;
                    }
                }
                Err(e) => {
                    // The same input would fail again: store what was lost, as a gap.
                    self.metrics.rejected.inc();
                    tracing::error!(source = %batch.source, seq = batch.seq, error = %e,
                        "audit log: batch rejected; recorded as a gap");
                    batch = rejection(&batch, &e);
                }
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
