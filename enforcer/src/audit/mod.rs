//! The audit log's capture side: every flow decision the rules log, attributed,
//! aggregated and spooled for the operator.
//!
//! ```text
//!   kernel: rules ─NFLOG group─► nflog (netlink socket) ─► packet (decode) ─► attribute (rule id, pods)
//!                                                                               │
//!                               stream ◄── spool (bounded files) ◄── aggregate (window)
//! ```
//!
//! The rules ([`crate::render()`]) log before they decide: an allowing rule logs each
//! new connection (the pod chains only see conntrack NEW packets), a denying rule
//! and a tier's default denial log rate-limited per source address. One reader
//! thread ([`Capture`]) owns the socket: it decodes what the kernel sends, maps
//! each prefix to its rule with the ids of the rules in force
//! ([`Attribution`]), adds to the window's [`Aggregator`], and at the end of each
//! window appends a batch to the [`Spool`], which the stream client sends and
//! releases on acknowledgement. Nothing is lost silently: malformed messages,
//! unknown ids and kernel overruns (a jump in the group's sequence numbers) are
//! counted ([`Counters`]) and go out as [`Gap`]s in the next batch; what the spool
//! must drop is a gap too.

pub mod aggregate;
pub mod attribute;
pub mod nflog;
pub mod packet;
pub mod spool;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use palisade_wire::audit::Gap;
use serde::Serialize;
use serde_json::json;
use thiserror::Error;

pub use aggregate::Aggregator;
pub use attribute::{Attribution, Ids, Unattributed};
pub use nflog::{LogRecord, NflogError, NflogSocket, Parsed, RecvError};
pub use spool::{Spool, SpoolError};

use crate::stream::Emit;

/// Most decisions in one batch.
pub const MAX_BATCH: usize = 5_000;

/// The enforcer's audit settings.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub group: u16,
    /// Aggregation window: identical decisions inside it are one record.
    pub window: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// How long the ids of a replaced rule set stay known.
    pub keep_previous: Duration,
}

#[derive(Debug, Error)]
pub enum AuditError {
    #[error(transparent)]
    Nflog(#[from] NflogError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("starting the NFLOG reader thread: {0}")]
    Thread(std::io::Error),
}

/// What the reader counted since it started (the audit metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Log messages decoded and attributed.
    pub records: AtomicU64,
    /// Messages that could not be decoded (skipped).
    pub malformed: AtomicU64,
    /// Messages whose prefix names no known rule (skipped).
    pub unattributed: AtomicU64,
    /// Messages the kernel dropped (ENOBUFS; counted from sequence number jumps).
    pub overrun_lost: AtomicU64,
    /// ENOBUFS errors seen.
    pub overruns: AtomicU64,
    /// Batches spooled.
    pub batches: AtomicU64,
    /// Batches that could not be spooled (their decisions are lost; also a gap).
    pub spool_errors: AtomicU64,
}

/// A snapshot of [`Counters`] plus the spool's drops.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterValues {
    pub records: u64,
    pub malformed: u64,
    pub unattributed: u64,
    pub overrun_lost: u64,
    pub overruns: u64,
    pub batches: u64,
    pub spool_errors: u64,
    pub spool_dropped: u64,
}

/// The running capture: the reader thread and what it shares.
pub struct Capture {
    pub spool: Arc<Spool>,
    pub attribution: Arc<Mutex<Attribution>>,
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Binds the NFLOG group in the calling thread's network namespace, opens the
    /// spool and starts the reader thread.
    pub fn start(config: &AuditConfig, node: &str, emit: Emit) -> Result<Capture, AuditError> {
        let socket = NflogSocket::bind(config.group, Duration::from_millis(100))?;
        let spool = Arc::new(Spool::open(
            &config.spool_dir,
            node,
            config.spool_max_bytes,
        )?);
        let attribution = Arc::new(Mutex::new(Attribution::new(node, config.keep_previous)));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            socket,
            spool: Arc::clone(&spool),
            attribution: Arc::clone(&attribution),
            counters: Arc::clone(&counters),
            stop: Arc::clone(&stop),
            window: config.window,
            emit,
        };
        let thread = std::thread::Builder::new()
            .name("nflog-reader".into())
            .spawn(move || reader.run())
            .map_err(AuditError::Thread)?;
        Ok(Capture {
            spool,
            attribution,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    pub fn counters(&self) -> CounterValues {
        let c = &self.counters;
        CounterValues {
            records: c.records.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            unattributed: c.unattributed.load(Ordering::Relaxed),
            overrun_lost: c.overrun_lost.load(Ordering::Relaxed),
            overruns: c.overruns.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            spool_errors: c.spool_errors.load(Ordering::Relaxed),
            spool_dropped: self.spool.dropped(),
        }
    }

    /// Stops the reader after it spooled the window in progress.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Milliseconds since the epoch (0 before it).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What went wrong in the window in progress (becomes its gaps).
#[derive(Debug, Default)]
struct WindowLosses {
    malformed: u64,
    unattributed: u64,
    overrun_lost: u64,
    overrun: bool,
}

struct Reader {
    socket: NflogSocket,
    spool: Arc<Spool>,
    attribution: Arc<Mutex<Attribution>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    window: Duration,
    emit: Emit,
}

impl Reader {
    fn run(self) {
        // Datagrams hold at most the group's buffer (64 KiB) of messages.
        let mut buf = vec![0u8; 256 << 10];
        let mut agg = Aggregator::default();
        let mut losses = WindowLosses::default();
        let mut window_start = Instant::now();
        let mut window_start_ms = now_ms();
        let mut next_seq: Option<u32> = None;
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            match self.socket.recv(&mut buf) {
                Ok(n) => self.datagram(&buf[..n], &mut agg, &mut losses, &mut next_seq),
                Err(RecvError::Timeout) => {}
                Err(RecvError::Overrun) => {
                    self.counters.overruns.fetch_add(1, Ordering::Relaxed);
                    losses.overrun = true;
                }
                Err(RecvError::Io(e)) => {
                    (self.emit)(json!({"error": format!("NFLOG reader: {e}")}));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if stopping || window_start.elapsed() >= self.window {
                self.flush(&mut agg, &mut losses, window_start_ms);
                window_start = Instant::now();
                window_start_ms = now_ms();
            }
            if stopping {
                return;
            }
        }
    }

    fn datagram(
        &self,
        data: &[u8],
        agg: &mut Aggregator,
        losses: &mut WindowLosses,
        next_seq: &mut Option<u32>,
    ) {
        let attribution = self.attribution.lock().unwrap_or_else(|e| e.into_inner());
        take_datagram(data, &attribution, &self.counters, agg, losses, next_seq);
    }

    /// Ends the window: its decisions and losses go to the spool.
    fn flush(&self, agg: &mut Aggregator, losses: &mut WindowLosses, from_ms: i64) {
        let mut gaps: Vec<Gap> = Vec::new();
        let l = std::mem::take(losses);
        if l.malformed > 0 {
            gaps.push(
                self.spool
                    .gap(from_ms, l.malformed, "malformed NFLOG messages"),
            );
        }
        if l.unattributed > 0 {
            gaps.push(self.spool.gap(
                from_ms,
                l.unattributed,
                "NFLOG messages with an unknown rule id",
            ));
        }
        if l.overrun || l.overrun_lost > 0 {
            gaps.push(self.spool.gap(
                from_ms,
                l.overrun_lost,
                "kernel NFLOG buffer overrun (ENOBUFS)",
            ));
        }
        if agg.is_empty() && gaps.is_empty() {
            return;
        }
        let mut decisions = agg.take();
        let abnormal = !gaps.is_empty();
        // Batches of at most MAX_BATCH decisions (a window of distinct connections
        // can hold many), the gaps with the first.
        let mut gaps = Some(gaps);
        while !decisions.is_empty() || gaps.is_some() {
            let rest = decisions.split_off(decisions.len().min(MAX_BATCH));
            let chunk = std::mem::replace(&mut decisions, rest);
            let lost: u64 = chunk.iter().map(|d| d.count).sum();
            match self.spool.append(chunk, gaps.take().unwrap_or_default()) {
                Ok(_) => {
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.counters.spool_errors.fetch_add(1, Ordering::Relaxed);
                    (self.emit)(
                        json!({"error": format!("audit spool: {e}"), "decisions_lost": lost}),
                    );
                }
            }
        }
        if abnormal {
            (self.emit)(json!({"audit": {
                "malformed": self.counters.malformed.load(Ordering::Relaxed),
                "unattributed": self.counters.unattributed.load(Ordering::Relaxed),
                "overrun_lost": self.counters.overrun_lost.load(Ordering::Relaxed),
                "spool_dropped": self.spool.dropped(),
            }}));
        }
    }
}

/// Decodes one datagram into the window: records attributed and aggregated,
/// malformed messages, unknown ids and sequence-number jumps counted (the reader
/// goes on whatever a message holds).
fn take_datagram(
    data: &[u8],
    attribution: &Attribution,
    counters: &Counters,
    agg: &mut Aggregator,
    losses: &mut WindowLosses,
    next_seq: &mut Option<u32>,
) {
    let now = Instant::now();
    let now_ms = now_ms();
    nflog::parse_datagram(data, &mut |parsed| match parsed {
        Parsed::Record(record) => {
            if let Some(seq) = record.seq {
                sequence(seq, next_seq, counters, losses);
            }
            let at = record.timestamp_ms.unwrap_or(now_ms);
            match attribution.decision(&record, at, now) {
                Ok(d) => {
                    counters.records.fetch_add(1, Ordering::Relaxed);
                    agg.add(d);
                }
                Err(_) => {
                    counters.unattributed.fetch_add(1, Ordering::Relaxed);
                    losses.unattributed += 1;
                }
            }
        }
        Parsed::Unreadable { seq, .. } => {
            // The message reached us (no kernel loss), the ones before it may not have.
            sequence(seq, next_seq, counters, losses);
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            losses.malformed += 1;
        }
        Parsed::Malformed(_) => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            losses.malformed += 1;
        }
        Parsed::Ack(_) => {}
    });
}

/// Follows the group's message numbers: a jump forward is the number of messages the
/// kernel dropped; a jump back (the group was bound again) is no loss.
fn sequence(seq: u32, next_seq: &mut Option<u32>, counters: &Counters, losses: &mut WindowLosses) {
    if let Some(expected) = *next_seq {
        let lost = u64::from(seq.wrapping_sub(expected));
        if lost > 0 && lost < 1 << 31 {
            losses.overrun_lost += lost;
            counters.overrun_lost.fetch_add(lost, Ordering::Relaxed);
        }
    }
    *next_seq = Some(seq.wrapping_add(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::packet::tests::v4_tcp_syn;
    use crate::render::RuleRef;
    use palisade_policy::model::{Action, Direction};
    use std::collections::BTreeMap;

    #[test]
    fn malformed_and_lost_messages_are_counted_and_the_rest_goes_on() {
        let mut ids = BTreeMap::new();
        ids.insert(
            "T1DI-2".to_string(),
            RuleRef {
                id: "T1DI-2".into(),
                tier: "networkpolicy".into(),
                policy: None,
                direction: Direction::Ingress,
                rule_index: None,
                rule_name: None,
                action: Action::Deny,
                isolated_by: vec![],
            },
        );
        let mut attribution = Attribution::new("n1", Duration::from_secs(30));
        attribution.update(Arc::new(ids), &[], Instant::now(), now_ms());
        let counters = Counters::default();
        let mut agg = Aggregator::default();
        let mut losses = WindowLosses::default();
        let mut next_seq = None;
        let syn = v4_tcp_syn();
        // seq 1 good; seq 2 truncated inside the IP header; seq 3 unknown id; seq 7 good
        // (4, 5, 6 dropped by the kernel); then a datagram cut in the middle of a message.
        let mut first = nflog::packet_message("T1DI-2", &syn, 2, 1);
        first.extend(nflog::packet_message("T1DI-2", &syn[..9], 2, 2));
        first.extend(nflog::packet_message("PnopeR0I", &syn, 2, 3));
        first.extend(nflog::packet_message("T1DI-2", &syn, 2, 7));
        take_datagram(
            &first,
            &attribution,
            &counters,
            &mut agg,
            &mut losses,
            &mut next_seq,
        );
        let cut = nflog::packet_message("T1DI-2", &syn, 2, 8);
        take_datagram(
            &cut[..cut.len() - 5],
            &attribution,
            &counters,
            &mut agg,
            &mut losses,
            &mut next_seq,
        );
        // And the reader goes on: the next datagram is decoded.
        take_datagram(
            &nflog::packet_message("T1DI-2", &syn, 2, 8),
            &attribution,
            &counters,
            &mut agg,
            &mut losses,
            &mut next_seq,
        );
        assert_eq!(counters.records.load(Ordering::Relaxed), 3);
        assert_eq!(counters.malformed.load(Ordering::Relaxed), 2);
        assert_eq!(counters.unattributed.load(Ordering::Relaxed), 1);
        assert_eq!(counters.overrun_lost.load(Ordering::Relaxed), 3);
        assert_eq!(
            (losses.malformed, losses.unattributed, losses.overrun_lost),
            (2, 1, 3)
        );
        let decisions = agg.take();
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].count, 3);
    }
}
