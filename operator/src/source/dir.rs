//! The manifest-directory source: a folder of YAML files (any mix of Namespaces, Nodes,
//! Pods with `spec.nodeName` and `status.podIP(s)`, and every policy kind, several documents
//! per file) standing in for the API server, followed by polling.
//!
//! - Files: `*.yaml`, `*.yml` and `*.json` anywhere under the folder, read in path order.
//!   Names starting with `.` are skipped (editors' temporary files; Kubernetes ConfigMap
//!   volumes keep their real files in `..data`, reached through the visible symlinks).
//! - Every poll (100 ms by default) compares each file's size, modification time and inode
//!   with the last poll, and reads the files that changed (and those modified in the last two
//!   seconds, whose timestamps may be too coarse to tell two writes apart). A file whose
//!   content did not change is not parsed again. Then the whole directory's objects are
//!   compared with what was sent before, and only the difference goes out: objects added or
//!   changed (`Apply`), removed (`Delete`), and rejections that appeared or went away.
//! - A document that cannot be read or converted is rejected with its file, document number
//!   and line; if its object was accepted before (in any file), that version stays. A file
//!   that cannot be read at all keeps the objects it had. An object defined twice is taken
//!   from the first file (in path order) and the second definition is rejected.
//! - Write files atomically (write a temporary `.name`, then rename it) for a consistent
//!   read: a file caught half-written is read as it is and corrected on the next poll.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use palisade_crds::{parse_objects, ClusterObject, CrdError, ObjectKey};
use tracing::{debug, info, warn};

use super::{Event, EventSender, Rejection, RejectionId, SourceError};
use crate::metrics::Metrics;

/// Files modified this recently are re-read on every poll (coarse timestamps).
const RECENT: Duration = Duration::from_secs(2);

/// Follows a manifest directory.
pub struct DirSource {
    state: DirState,
    poll: Duration,
    metrics: Arc<Metrics>,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>, poll: Duration, metrics: Arc<Metrics>) -> Self {
        DirSource {
            state: DirState::new(root),
            poll,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Sends the directory's objects, then `Synced`, then the differences as files change,
    /// until the event channel closes. Fails only when the folder cannot be read at start.
    pub async fn run(mut self, events: EventSender) -> Result<(), SourceError> {
        let root = self.state.root.clone();
        let first = self.state.scan().map_err(|source| SourceError::Directory {
            path: root.clone(),
            source,
        })?;
        info!(
            path = %root.display(),
            objects = self.state.objects.len(),
            rejected = self.state.rejections.len(),
            "manifest directory read"
        );
        for event in first.into_iter().chain([Event::Synced]) {
            if events.send(event).await.is_err() {
                return Ok(());
            }
        }
        let mut unreadable = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = events.closed() => return Ok(()),
            }
            let batch = match self.state.scan() {
                Ok(batch) => {
                    if unreadable {
                        info!(path = %root.display(), "manifest directory readable again");
                        unreadable = false;
                    }
                    batch
                }
                Err(e) => {
                    // Keep every object: a folder that went away for a moment (a ConfigMap
                    // volume being swapped) must not open or close traffic.
                    if !unreadable {
                        warn!(path = %root.display(), error = %e,
                            "manifest directory unreadable; keeping the objects read before");
                        self.metrics.source_error("directory");
                        unreadable = true;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            tracing::info_span!("manifest_change", events = batch.len())
                .in_scope(|| log_batch(&batch));
            for event in batch {
                if events.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

fn log_batch(batch: &[Event]) {
    let count = |f: fn(&Event) -> bool| batch.iter().filter(|e| f(e)).count();
    info!(
        applied = count(|e| matches!(e, Event::Apply(_))),
        deleted = count(|e| matches!(e, Event::Delete(_))),
        rejected = count(|e| matches!(e, Event::Reject(_))),
        cleared = count(|e| matches!(e, Event::ClearRejection(_))),
        "manifest directory changed"
    );
}

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    device: u64,
}

/// One document of a file, converted.
#[derive(Debug)]
struct Doc {
    document: usize,
    key: Option<ObjectKey>,
    result: Result<Option<Arc<ClusterObject>>, CrdError>,
}

#[derive(Debug)]
struct FileState {
    fingerprint: Fingerprint,
    hash: u64,
    /// `Err`: the file could not be read (its objects are kept).
    docs: Result<Vec<Doc>, String>,
}

/// The directory as last read, and what was sent for it: the pure, synchronous part of the
/// source (tests drive it with [`DirState::scan`]).
#[derive(Debug)]
pub struct DirState {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// The objects sent, and the file each comes from.
    objects: BTreeMap<ObjectKey, (Arc<ClusterObject>, PathBuf)>,
    rejections: BTreeMap<RejectionId, Rejection>,
}

impl DirState {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirState {
            root: root.into(),
            files: BTreeMap::new(),
            objects: BTreeMap::new(),
            rejections: BTreeMap::new(),
        }
    }

    /// Reads what changed since the last scan and returns the events that bring a reader up
    /// to date (empty when nothing changed). Fails when the folder itself cannot be listed.
    pub fn scan(&mut self) -> std::io::Result<Vec<Event>> {
        let listed = list_files(&self.root)?;
        let now = SystemTime::now();
        let mut changed = false;
        let present: BTreeSet<&PathBuf> = listed.iter().map(|(p, _)| p).collect();
        let before = self.files.len();
        self.files.retain(|path, _| present.contains(path));
        changed |= self.files.len() != before;
        for (path, fingerprint) in &listed {
            let recent = fingerprint
                .modified
                .and_then(|m| now.duration_since(m).ok())
                .is_none_or(|age| age < RECENT);
            if let Some(file) = self.files.get_mut(path) {
                if file.fingerprint == *fingerprint && !recent {
                    continue;
                }
            }
            let content = std::fs::read(path);
            let hash = match &content {
                Ok(bytes) => hash_of(bytes),
                Err(_) => 0,
            };
            if let Some(file) = self.files.get_mut(path) {
                file.fingerprint = *fingerprint;
                if file.hash == hash && content.is_ok() && file.docs.is_ok() {
                    continue;
                }
            }
            let docs = match content {
                Err(e) => Err(format!("cannot read: {e}")),
                Ok(bytes) => match String::from_utf8(bytes) {
                    Err(_) => Err("not UTF-8 text".to_string()),
                    Ok(text) => Ok(parse(&text)),
                },
            };
            debug!(path = %path.display(), "manifest file read");
            self.files.insert(
                path.clone(),
                FileState {
                    fingerprint: *fingerprint,
                    hash,
                    docs,
                },
            );
            changed = true;
        }
        if !changed {
            return Ok(Vec::new());
        }
        Ok(self.rebuild())
    }

    /// Recomputes the directory's objects and rejections from the files and returns the
    /// difference from what was sent.
    fn rebuild(&mut self) -> Vec<Event> {
        let mut objects: BTreeMap<ObjectKey, (Arc<ClusterObject>, PathBuf)> = BTreeMap::new();
        let mut rejections: BTreeMap<RejectionId, Rejection> = BTreeMap::new();
        let mut finished: BTreeSet<ObjectKey> = BTreeSet::new();
        // Rejected objects whose earlier version stays.
        let mut keep: BTreeSet<ObjectKey> = BTreeSet::new();
        for (path, file) in &self.files {
            let name = self.display(path);
            let docs = match &file.docs {
                Ok(docs) => docs,
                Err(reason) => {
                    rejections.insert(
                        RejectionId::Document(name.clone()),
                        Rejection {
                            id: RejectionId::Document(name.clone()),
                            kind: "unknown".to_string(),
                            origin: Some(name.clone()),
                            error: reason.clone(),
                        },
                    );
                    keep.extend(
                        self.objects
                            .iter()
                            .filter(|(_, (_, from))| from == path)
                            .map(|(key, _)| key.clone()),
                    );
                    continue;
                }
            };
            for doc in docs {
                match &doc.result {
                    Ok(Some(object)) => {
                        let key = object.key();
                        if let Some((_, first)) = objects.get(&key) {
                            let origin = format!("{name} document {}", doc.document);
                            let first = self.display(first);
                            rejections.insert(
                                RejectionId::Document(origin.clone()),
                                Rejection {
                                    id: RejectionId::Document(origin.clone()),
                                    kind: key.kind().to_string(),
                                    origin: Some(origin),
                                    error: format!(
                                        "{key} is defined more than once (first in {first})"
                                    ),
                                },
                            );
                            continue;
                        }
                        objects.insert(key, (object.clone(), path.clone()));
                    }
                    Ok(None) => {
                        if let Some(key) = &doc.key {
                            finished.insert(key.clone());
                        }
                    }
                    Err(e) => {
                        let origin = match e.line() {
                            Some(line) => format!("{name} document {} (line {line})", doc.document),
                            None => format!("{name} document {}", doc.document),
                        };
                        let error = e.innermost().to_string();
                        let rejection = match &doc.key {
                            Some(key) => {
                                keep.insert(key.clone());
                                Rejection::object(key.clone(), Some(origin), error)
                            }
                            None => Rejection {
                                id: RejectionId::Document(origin.clone()),
                                kind: "unknown".to_string(),
                                origin: Some(origin),
                                error,
                            },
                        };
                        rejections.insert(rejection.id.clone(), rejection);
                    }
                }
            }
        }
        for key in keep {
            if objects.contains_key(&key) || finished.contains(&key) {
                continue;
            }
            if let Some(previous) = self.objects.get(&key) {
                objects.insert(key, previous.clone());
            }
        }

        let mut events = Vec::new();
        for (key, (object, _)) in &objects {
            let same = self
                .objects
                .get(key)
                .is_some_and(|(old, _)| Arc::ptr_eq(old, object) || old == object);
            if !same {
                events.push(Event::Apply(ClusterObject::clone(object)));
            }
        }
        for key in self.objects.keys() {
            if !objects.contains_key(key) {
                events.push(Event::Delete(key.clone()));
            }
        }
        for id in self.rejections.keys() {
            if !rejections.contains_key(id) {
                events.push(Event::ClearRejection(id.clone()));
            }
        }
        for (id, rejection) in &rejections {
            if self.rejections.get(id) != Some(rejection) {
                events.push(Event::Reject(rejection.clone()));
            }
        }
        self.objects = objects;
        self.rejections = rejections;
        events
    }

    /// A file's name as shown in rejections: relative to the folder.
    fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// The objects currently read (after the last scan).
    pub fn objects(&self) -> impl Iterator<Item = &ClusterObject> {
        self.objects.values().map(|(o, _)| o.as_ref())
    }

    /// The rejections currently standing (after the last scan).
    pub fn rejections(&self) -> impl Iterator<Item = &Rejection> {
        self.rejections.values()
    }
}

fn parse(text: &str) -> Vec<Doc> {
    parse_objects(text)
        .into_iter()
        .map(|d| Doc {
            document: d.document,
            key: d.key,
            result: d.result.map(|o| o.map(Arc::new)),
        })
        .collect()
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The manifest files under `root` (recursively, in path order), with their fingerprints.
/// Hidden names are skipped; symlinks are followed. Files that vanish while listing are
/// skipped; an unreadable subfolder is an error (its files must not look deleted).
fn list_files(root: &Path) -> std::io::Result<Vec<(PathBuf, Fingerprint)>> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    let mut seen_dirs = BTreeSet::new();
    while let Some(dir) = pending.pop() {
        let meta = std::fs::metadata(&dir)?;
        if !seen_dirs.insert((meta.dev(), meta.ino())) {
            continue; // a symlink loop
        }
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() && is_manifest(&path) {
                out.push((
                    path,
                    Fingerprint {
                        len: meta.len(),
                        modified: meta.modified().ok(),
                        inode: meta.ino(),
                        device: meta.dev(),
                    },
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

#[cfg(test)]
mod tests;
