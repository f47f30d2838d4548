//! The spool: decision batches on disk until the operator acknowledges them.
//!
//! A directory in the enforcer's state directory holds
//!
//! - `source-id`: this enforcer's id (random, created once): the batches' source
//!   is `<node>/<id>`, so sequence numbers stay unique across restarts;
//! - `acked`: the highest sequence number the operator acknowledged;
//! - `batch-<seq>.json`: one file per batch not yet acknowledged, written
//!   (temporary name, fsync, rename) before it is sent.
//!
//! Batches are sent in order and sent again after a reconnect; an acknowledgement
//! of `seq` removes every batch up to it (it is cumulative). The total size of the
//! batch files is bounded (`max_bytes`): when a new batch does not fit, the
//! **oldest** batches are dropped until it does (the newest decisions matter most
//! when the operator has been away long enough to fill the spool), and the new
//! batch carries a [`Gap`] with the number of decisions dropped and their time
//! range ("spool full"), so the loss is recorded, never silent.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use palisade_wire::audit::{Decision, DecisionBatch, Gap};
use thiserror::Error;
use tokio::sync::Notify;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What is known of a spooled batch without reading it.
#[derive(Clone, Copy, Debug)]
struct Meta {
    bytes: u64,
    /// Sum of the decisions' counts.
    lost_if_dropped: u64,
    from_ms: i64,
    to_ms: i64,
}

#[derive(Debug, Default)]
struct Inner {
    batches: BTreeMap<u64, Meta>,
    bytes: u64,
    next_seq: u64,
    acked: u64,
    /// Gaps for the next batch (spooled batches found unreadable).
    pending_gaps: Vec<Gap>,
}

/// The bounded on-disk queue of batches.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    node: String,
    source: String,
    max_bytes: u64,
    inner: Mutex<Inner>,
    /// Woken when a batch is appended (the stream sends it).
    notify: Notify,
    /// Decisions dropped because the spool was full (the metric).
    dropped: AtomicU64,
}

fn batch_meta(batch: &DecisionBatch, bytes: u64) -> Meta {
    Meta {
        bytes,
        lost_if_dropped: batch.decisions.iter().map(|d| d.count).sum(),
        from_ms: batch
            .decisions
            .iter()
            .map(|d| d.first_seen_ms)
            .min()
            .unwrap_or(0),
        to_ms: batch
            .decisions
            .iter()
            .map(|d| d.last_seen_ms)
            .max()
            .unwrap_or(0),
    }
}

impl Spool {
    /// Opens (creating) the spool of `node` in `dir`, keeping what an earlier run left.
    pub fn open(dir: &Path, node: &str, max_bytes: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let id = load_or_create_id(&dir.join("source-id"))?;
        let acked_path = dir.join("acked");
        let acked = match std::fs::read_to_string(&acked_path) {
            Ok(t) => t.trim().parse::<u64>().map_err(|e| SpoolError::Corrupt {
                path: acked_path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&acked_path)(e)),
        };
        let mut inner = Inner {
            acked,
            next_seq: acked + 1,
            ..Inner::default()
        };
        let source = format!("{node}/{id}");
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(seq) = name
                .strip_prefix("batch-")
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let path = entry.path();
            if seq <= acked {
                // Acknowledged before a crash removed it.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let batch = read_batch(&path)?;
            if batch.source != source || batch.seq != seq {
                return Err(SpoolError::Corrupt {
                    path,
                    reason: format!("holds {} #{}", batch.source, batch.seq),
                });
            }
            let bytes = entry.metadata().map_err(io_err(&path))?.len();
            inner.batches.insert(seq, batch_meta(&batch, bytes));
            inner.bytes += bytes;
            inner.next_seq = inner.next_seq.max(seq + 1);
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            node: node.to_string(),
            source,
            max_bytes,
            inner: Mutex::new(inner),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `<node>/<id>`.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("batch-{seq:020}.json"))
    }

    /// Decisions dropped so far because the spool was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Batches waiting for an acknowledgement, and their bytes.
    pub fn pending(&self) -> (usize, u64) {
        let inner = self.inner();
        (inner.batches.len(), inner.bytes)
    }

    /// Spools a new batch (making room as described above); returns its seq. When it
    /// cannot be written, its decisions are lost but never silently: a gap saying so,
    /// and the gaps it carried, go with the next batch.
    pub fn append(&self, decisions: Vec<Decision>, gaps: Vec<Gap>) -> Result<u64, SpoolError> {
        let mut inner = self.inner();
        let mut batch = DecisionBatch {
            source: self.source.clone(),
            seq: inner.next_seq,
            decisions,
            gaps,
        };
        batch.gaps.append(&mut inner.pending_gaps);
        let written = self
            .make_room(&mut inner, &mut batch)
            .and_then(|json| write_atomically(&self.path(batch.seq), &json).map(|()| json));
        let json = match written {
            Ok(json) => json,
            Err(e) => {
                let meta = batch_meta(&batch, 0);
                inner.pending_gaps.append(&mut batch.gaps);
                if meta.lost_if_dropped > 0 {
                    inner.pending_gaps.push(Gap {
                        node: self.node.clone(),
                        from_ms: meta.from_ms,
                        to_ms: meta.to_ms,
                        lost: meta.lost_if_dropped,
                        reason: format!("spool write failed: {e}"),
                    });
                }
                return Err(e);
            }
        };
        let bytes = json.len() as u64;
        inner.batches.insert(batch.seq, batch_meta(&batch, bytes));
        inner.bytes += bytes;
        inner.next_seq = batch.seq + 1;
        drop(inner);
        self.notify.notify_one();
        Ok(batch.seq)
    }

    /// Drops the oldest batches until `batch` fits (its own decisions last, when it
    /// is too big alone), adding a gap for what went to it; returns its JSON.
    fn make_room(
        &self,
        inner: &mut Inner,
        batch: &mut DecisionBatch,
    ) -> Result<Vec<u8>, SpoolError> {
        let mut full_gap: Option<Gap> = None;
        loop {
            // The gap so far rides along while the size is checked.
            batch.gaps.extend(full_gap.clone());
            let json = serde_json::to_vec(&*batch).map_err(|e| SpoolError::Corrupt {
                path: self.path(batch.seq),
                reason: e.to_string(),
            })?;
            if inner.bytes + json.len() as u64 <= self.max_bytes {
                return Ok(json);
            }
            let (lost, from, to) = if let Some((&old, &meta)) = inner.batches.iter().next() {
                let path = self.path(old);
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                inner.batches.remove(&old);
                inner.bytes -= meta.bytes;
                (meta.lost_if_dropped, meta.from_ms, meta.to_ms)
            } else if !batch.decisions.is_empty() {
                // Alone too big: its decisions go, the gap says so.
                let meta = batch_meta(batch, 0);
                batch.decisions.clear();
                (meta.lost_if_dropped, meta.from_ms, meta.to_ms)
            } else {
                // Only gaps, and still too big: written anyway (a few hundred bytes).
                return Ok(json);
            };
            if full_gap.is_some() {
                batch.gaps.pop();
            }
            self.dropped.fetch_add(lost, Ordering::Relaxed);
            let gap = full_gap.get_or_insert_with(|| Gap {
                node: self.node.clone(),
                from_ms: from,
                to_ms: to,
                lost: 0,
                reason: "spool full: oldest decisions dropped".into(),
            });
            gap.lost += lost;
            gap.from_ms = gap.from_ms.min(from);
            gap.to_ms = gap.to_ms.max(to);
        }
    }

    /// The first spooled batch after `seq` (in order), read from its file.
    /// A batch file that cannot be read any more (damaged on disk) is removed and
    /// becomes a gap of the next batch, so one bad file never stops the others.
    pub fn next_after(&self, seq: u64) -> Result<Option<DecisionBatch>, SpoolError> {
        let mut after = seq;
        // Bounded by the batches spooled now.
        let count = self.inner().batches.len();
        for _ in 0..count {
            let next = {
                let inner = self.inner();
                inner
                    .batches
                    .range(after.saturating_add(1)..)
                    .next()
                    .map(|(s, m)| (*s, *m))
            };
            let Some((s, meta)) = next else {
                return Ok(None);
            };
            let path = self.path(s);
            match read_batch(&path) {
                Ok(b) => return Ok(Some(b)),
                Err(e @ SpoolError::Io { .. }) => return Err(e),
                Err(SpoolError::Corrupt { reason, .. }) => {
                    let _ = std::fs::remove_file(&path);
                    let mut inner = self.inner();
                    if inner.batches.remove(&s).is_some() {
                        inner.bytes -= meta.bytes;
                    }
                    self.dropped
                        .fetch_add(meta.lost_if_dropped, Ordering::Relaxed);
                    let gap = Gap {
                        node: self.node.clone(),
                        from_ms: meta.from_ms,
                        to_ms: meta.to_ms,
                        lost: meta.lost_if_dropped,
                        reason: format!("spooled batch {s} unreadable: {reason}"),
                    };
                    inner.pending_gaps.push(gap);
                    after = s;
                }
            }
        }
        Ok(None)
    }

    /// The operator stored every batch up to `seq`.
    pub fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        let mut inner = self.inner();
        if seq <= inner.acked {
            return Ok(());
        }
        let done: Vec<u64> = inner.batches.range(..=seq).map(|(s, _)| *s).collect();
        inner.acked = seq;
        let acked_path = self.dir.join("acked");
        write_atomically(&acked_path, seq.to_string().as_bytes())?;
        for s in done {
            if let Some(meta) = inner.batches.remove(&s) {
                inner.bytes -= meta.bytes;
            }
            let path = self.path(s);
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// The highest acknowledged seq.
    pub fn acked(&self) -> u64 {
        self.inner().acked
    }

    /// Waits until a batch is appended.
    pub async fn appended(&self) {
        self.notify.notified().await;
    }

    /// A gap for the current time, for the pipeline.
    pub fn gap(&self, from_ms: i64, lost: u64, reason: &str) -> Gap {
        Gap {
            node: self.node.clone(),
            from_ms,
            to_ms: super::now_ms(),
            lost,
            reason: reason.to_string(),
        }
    }
}

fn read_batch(path: &Path) -> Result<DecisionBatch, SpoolError> {
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut text))
        .map_err(io_err(path))?;
    serde_json::from_slice(&text).map_err(|e| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data)
        .and_then(|()| f.sync_data())
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn load_or_create_id(path: &Path) -> Result<String, SpoolError> {
    match std::fs::read_to_string(path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err(Path::new("/dev/urandom")))?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_atomically(path, id.as_bytes())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_wire::audit::{AuditDirection, Verdict};

    fn decision(count: u64, at: i64) -> Decision {
        Decision {
            first_seen_ms: at,
            last_seen_ms: at + 1,
            count,
            node: "n1".into(),
            direction: AuditDirection::Egress,
            verdict: Verdict::Deny,
            protocol: "udp".into(),
            src_ip: "10.0.0.1".parse().expect("ip"),
            src_port: None,
            dst_ip: "10.0.0.2".parse().expect("ip"),
            dst_port: Some(53),
            src: None,
            dst: None,
            rule_id: "P1R0E".into(),
            tier: "networkpolicy".into(),
            policy: Some("NetworkPolicy default/x".into()),
            rule_index: Some(0),
            rule_name: None,
            isolated_by: vec![],
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pal-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn survives_restart_and_releases_on_ack() {
        let dir = tempdir("restart");
        let spool = Spool::open(&dir, "n1", 1 << 20).expect("opens");
        let source = spool.source().to_string();
        assert!(
            source.starts_with("n1/") && source.len() == 3 + 16,
            "{source}"
        );
        assert_eq!(spool.append(vec![decision(1, 10)], vec![]).expect("a"), 1);
        assert_eq!(spool.append(vec![decision(2, 20)], vec![]).expect("b"), 2);
        assert_eq!(spool.append(vec![decision(3, 30)], vec![]).expect("c"), 3);
        spool.ack(1).expect("ack");
        drop(spool);
        // A restart keeps the id and the unacknowledged batches, and counts on.
        let spool = Spool::open(&dir, "n1", 1 << 20).expect("reopens");
        assert_eq!(spool.source(), source);
        assert_eq!(spool.pending().0, 2);
        let b = spool.next_after(0).expect("reads").expect("a batch");
        assert_eq!((b.seq, b.decisions[0].count), (2, 2));
        let b = spool.next_after(2).expect("reads").expect("a batch");
        assert_eq!(b.seq, 3);
        assert!(spool.next_after(3).expect("reads").is_none());
        // Acks are cumulative, and an old ack changes nothing.
        spool.ack(3).expect("ack");
        spool.ack(2).expect("ack");
        assert_eq!(spool.pending(), (0, 0));
        drop(spool);
        let spool = Spool::open(&dir, "n1", 1 << 20).expect("reopens");
        assert_eq!(spool.append(vec![decision(1, 40)], vec![]).expect("d"), 4);
        assert_eq!(spool.acked(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_batch_that_cannot_be_written_becomes_a_gap_of_the_next() {
        let dir = tempdir("unwritable");
        let spool = Spool::open(&dir, "n1", 1 << 20).expect("opens");
        // Its temporary file cannot be created: a directory stands in the way.
        let blocker = spool.path(1).with_extension("tmp");
        std::fs::create_dir_all(&blocker).expect("blocker");
        let carried = Gap {
            node: "n1".into(),
            from_ms: 1,
            to_ms: 2,
            lost: 3,
            reason: "kernel NFLOG buffer overrun (ENOBUFS)".into(),
        };
        let failed = spool.append(vec![decision(7, 100)], vec![carried.clone()]);
        assert!(failed.is_err(), "{failed:?}");
        assert_eq!(spool.pending().0, 0);
        std::fs::remove_dir(&blocker).expect("unblock");
        let seq = spool.append(vec![], vec![]).expect("spooled");
        let next = spool.next_after(seq - 1).expect("reads").expect("a batch");
        assert_eq!(next.gaps.len(), 2, "{next:?}");
        assert_eq!(next.gaps[0], carried);
        assert_eq!(next.gaps[1].lost, 7);
        assert_eq!((next.gaps[1].from_ms, next.gaps[1].to_ms), (100, 101));
        assert!(
            next.gaps[1].reason.starts_with("spool write failed"),
            "{next:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bounded_drops_oldest_and_records_the_gap() {
        let dir = tempdir("bounded");
        let one = serde_json::to_vec(&DecisionBatch {
            source: "n1/0123456789abcdef".into(),
            seq: 1,
            decisions: vec![decision(5, 0)],
            gaps: vec![],
        })
        .expect("json")
        .len() as u64;
        // Room for three batches (and some slack for the gap).
        let spool = Spool::open(&dir, "n1", one * 3 + 150).expect("opens");
        for i in 0..3 {
            spool
                .append(vec![decision(5, i * 100)], vec![])
                .expect("fits");
        }
        assert_eq!(spool.dropped(), 0);
        let seq = spool
            .append(vec![decision(5, 300)], vec![])
            .expect("made room");
        assert_eq!(seq, 4);
        assert_eq!(spool.dropped(), 5);
        assert!(spool.pending().1 <= one * 3 + 150);
        // The oldest went; the newest carries the gap.
        let first = spool.next_after(0).expect("reads").expect("a batch");
        assert_eq!(first.seq, 2);
        let last = spool.next_after(3).expect("reads").expect("a batch");
        assert_eq!(last.gaps.len(), 1);
        assert_eq!(last.gaps[0].lost, 5);
        assert_eq!((last.gaps[0].from_ms, last.gaps[0].to_ms), (0, 1));
        assert!(last.gaps[0].reason.contains("spool full"));
        // A damaged batch file is skipped, and the next batch says what was lost.
        std::fs::write(spool.path(2), b"{not json").expect("damage");
        let next = spool.next_after(0).expect("reads").expect("a batch");
        assert_eq!(next.seq, 3);
        let seq = spool.append(vec![], vec![]).expect("spooled");
        let with_gap = spool.next_after(seq - 1).expect("reads").expect("a batch");
        assert_eq!(with_gap.gaps.len(), 1, "{with_gap:?}");
        assert_eq!(with_gap.gaps[0].lost, 5);
        assert!(with_gap.gaps[0].reason.contains("unreadable"));
        // A batch too big for the whole spool keeps only its gap: everything spooled
        // before it (batches 3 and 4, 5 decisions each, and the gap batch) and its own
        // 100 decisions are dropped.
        let many: Vec<Decision> = (0..100).map(|i| decision(1, i)).collect();
        let seq = spool.append(many, vec![]).expect("spooled");
        let big = spool.next_after(seq - 1).expect("reads").expect("a batch");
        assert!(big.decisions.is_empty());
        assert_eq!(big.gaps.iter().map(|g| g.lost).sum::<u64>(), 100 + 10);
        assert_eq!(spool.pending().0, 1);
        assert_eq!(spool.dropped(), 5 + 5 + 110);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
