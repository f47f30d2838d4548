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
//!   content did not change is not parsed again. A changed file withdraws what its previous
//!   version contributed and adds what the new one does; only the objects it names are
//!   settled again, and only the difference goes out: objects added or changed (`Apply`),
//!   removed (`Delete`), and rejections that appeared or went away. An edit costs the size of
//!   its file (plus one `stat` per file), not of the directory.
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
    /// The documents last read (kept while the file cannot be read).
    docs: Vec<Doc>,
    /// Why the file cannot be read now, if it cannot.
    unreadable: Option<String>,
}

/// A document's place: its file and number.
type Place = (PathBuf, usize);

/// The directory as last read, and what was sent for it: the pure, synchronous part of the
/// source (tests drive it with [`DirState::scan`]).
///
/// Incremental: a changed file withdraws what its previous version contributed and adds what
/// the new one does; only the objects it names are looked at again, so one edit costs the
/// size of its file, not of the directory.
#[derive(Debug, Default)]
pub struct DirState {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Valid definitions of each object, in path and document order (the first one wins).
    defs: BTreeMap<ObjectKey, BTreeMap<Place, Arc<ClusterObject>>>,
    /// Documents naming a pod that finished (it is deleted, never carried over).
    finished: BTreeMap<ObjectKey, BTreeSet<Place>>,
    /// Documents naming an object that could not be converted.
    invalid: BTreeMap<ObjectKey, BTreeMap<Place, Rejection>>,
    /// The duplicate-definition rejections standing for each object.
    duplicates: BTreeMap<ObjectKey, BTreeSet<RejectionId>>,
    /// Rejections of documents that name no object (not YAML, another kind), per file.
    unnamed: BTreeMap<PathBuf, BTreeMap<RejectionId, Rejection>>,
    /// The objects sent.
    objects: BTreeMap<ObjectKey, Arc<ClusterObject>>,
    /// The rejections sent.
    rejections: BTreeMap<RejectionId, Rejection>,
}

impl DirState {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirState {
            root: root.into(),
            ..DirState::default()
        }
    }

    /// Reads what changed since the last scan and returns the events that bring a reader up
    /// to date (empty when nothing changed). Fails when the folder itself cannot be listed.
    pub fn scan(&mut self) -> std::io::Result<Vec<Event>> {
        let listed = list_files(&self.root)?;
        let now = SystemTime::now();
        let mut events = Vec::new();
        let present: BTreeSet<&PathBuf> = listed.iter().map(|(p, _)| p).collect();
        let removed: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in removed {
            if let Some(old) = self.files.remove(&path) {
                self.set_unreadable(&path, None, &mut events);
                self.replace(&path, old.docs, Vec::new(), &mut events);
            }
        }
        for (path, fingerprint) in &listed {
            let recent = fingerprint
                .modified
                .and_then(|m| now.duration_since(m).ok())
                .is_none_or(|age| age < RECENT);
            if let Some(file) = self.files.get(path) {
                if file.fingerprint == *fingerprint && !recent {
                    continue;
                }
            }
            let content = std::fs::read(path)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|bytes| {
                    let hash = hash_of(&bytes);
                    String::from_utf8(bytes)
                        .map(|text| (hash, text))
                        .map_err(|_| "not UTF-8 text".to_string())
                });
            let (hash, text) = match content {
                Ok(read) => read,
                Err(reason) => {
                    // Keep what the file had; say why it is not read.
                    let file = self.files.entry(path.clone()).or_insert(FileState {
                        fingerprint: *fingerprint,
                        hash: 0,
                        docs: Vec::new(),
                        unreadable: None,
                    });
                    file.fingerprint = *fingerprint;
                    file.unreadable = Some(reason.clone());
                    self.set_unreadable(path, Some(reason), &mut events);
                    continue;
                }
            };
            let old = match self.files.remove(path) {
                Some(file) if file.hash == hash && file.unreadable.is_none() => {
                    self.files.insert(
                        path.clone(),
                        FileState {
                            fingerprint: *fingerprint,
                            ..file
                        },
                    );
                    continue;
                }
                Some(file) => file.docs,
                None => Vec::new(),
            };
            debug!(path = %path.display(), "manifest file read");
            self.set_unreadable(path, None, &mut events);
            let docs = parse(&text);
            self.replace(
                path,
                old,
                docs.iter().map(Doc::share).collect(),
                &mut events,
            );
            self.files.insert(
                path.clone(),
                FileState {
                    fingerprint: *fingerprint,
                    hash,
                    docs,
                    unreadable: None,
                },
            );
        }
        Ok(events)
    }

    /// Withdraws what `old` documents of `path` contributed, adds what `new` ones do, and
    /// settles every object they name.
    fn replace(&mut self, path: &Path, old: Vec<Doc>, new: Vec<Doc>, events: &mut Vec<Event>) {
        let name = self.display(path);
        let mut touched: BTreeSet<ObjectKey> = BTreeSet::new();
        for doc in &old {
            let place = (path.to_path_buf(), doc.document);
            match (&doc.result, &doc.key) {
                (Ok(Some(object)), _) => {
                    let key = object.key();
                    remove_in(&mut self.defs, &key, &place);
                    touched.insert(key);
                }
                (Ok(None), Some(key)) => {
                    if let Some(set) = self.finished.get_mut(key) {
                        set.remove(&place);
                        if set.is_empty() {
                            self.finished.remove(key);
                        }
                    }
                    touched.insert(key.clone());
                }
                (Err(_), Some(key)) => {
                    remove_in(&mut self.invalid, key, &place);
                    touched.insert(key.clone());
                }
                _ => {}
            }
        }
        let mut unnamed = BTreeMap::new();
        for doc in new {
            let place = (path.to_path_buf(), doc.document);
            match (doc.result, doc.key) {
                (Ok(Some(object)), _) => {
                    let key = object.key();
                    self.defs
                        .entry(key.clone())
                        .or_default()
                        .insert(place, object);
                    touched.insert(key);
                }
                (Ok(None), Some(key)) => {
                    self.finished.entry(key.clone()).or_default().insert(place);
                    touched.insert(key);
                }
                (Ok(None), None) => {}
                (Err(e), key) => {
                    let origin = match e.line() {
                        Some(line) => format!("{name} document {} (line {line})", doc.document),
                        None => format!("{name} document {}", doc.document),
                    };
                    let error = e.innermost().to_string();
                    match key {
                        Some(key) => {
                            let rejection = Rejection::object(key.clone(), Some(origin), error);
                            self.invalid
                                .entry(key.clone())
                                .or_default()
                                .insert(place, rejection);
                            touched.insert(key);
                        }
                        None => {
                            let id = RejectionId::Document(origin.clone());
                            unnamed.insert(
                                id.clone(),
                                Rejection {
                                    id,
                                    kind: "unknown".to_string(),
                                    origin: Some(origin),
                                    error,
                                },
                            );
                        }
                    }
                }
            }
        }
        let before = if unnamed.is_empty() {
            self.unnamed.remove(path)
        } else {
            self.unnamed.insert(path.to_path_buf(), unnamed.clone())
        }
        .unwrap_or_default();
        for id in before.keys() {
            if !unnamed.contains_key(id) {
                self.set_rejection(id.clone(), None, events);
            }
        }
        for (id, rejection) in unnamed {
            self.set_rejection(id, Some(rejection), events);
        }
        // Duplicate rejections are named by place, and a place may change the object it
        // defines: clear the old ones of every touched object before setting the new ones.
        let mut cleared = BTreeSet::new();
        let mut set = BTreeMap::new();
        for key in touched {
            let (gone, now) = self.settle(&key, events);
            cleared.extend(gone);
            set.extend(now);
        }
        for id in cleared {
            if !set.contains_key(&id) {
                self.set_rejection(id, None, events);
            }
        }
        for (id, rejection) in set {
            self.set_rejection(id, Some(rejection), events);
        }
    }

    /// Decides an object's state from every document naming it and sends what changed,
    /// except its duplicate-definition rejections: returns those that no longer stand and
    /// those that do, for the caller to send.
    fn settle(
        &mut self,
        key: &ObjectKey,
        events: &mut Vec<Event>,
    ) -> (BTreeSet<RejectionId>, BTreeMap<RejectionId, Rejection>) {
        let defs = self.defs.get(key);
        let winner = defs.and_then(|d| d.iter().next());
        let desired = match winner {
            Some((_, object)) => Some(object.clone()),
            None if self.finished.contains_key(key) => None,
            // Only invalid documents: the version accepted before stays.
            None if self.invalid.contains_key(key) => self.objects.get(key).cloned(),
            None => None,
        };
        // Second and later definitions are rejected, naming the first.
        let mut duplicates = BTreeMap::new();
        if let (Some(defs), Some(((first, _), _))) = (defs, winner) {
            let first = self.display(first);
            for (path, document) in defs.keys().skip(1) {
                let origin = format!("{} document {document}", self.display(path));
                let id = RejectionId::Document(origin.clone());
                duplicates.insert(
                    id.clone(),
                    Rejection {
                        id,
                        kind: key.kind().to_string(),
                        origin: Some(origin),
                        error: format!("{key} is defined more than once (first in {first})"),
                    },
                );
            }
        }
        let invalid = self
            .invalid
            .get(key)
            .and_then(|m| m.values().next())
            .cloned();

        match (desired, self.objects.get(key)) {
            (Some(new), Some(old)) if Arc::ptr_eq(&new, old) || new == *old => {}
            (Some(new), _) => {
                events.push(Event::Apply(ClusterObject::clone(&new)));
                self.objects.insert(key.clone(), new);
            }
            (None, Some(_)) => {
                events.push(Event::Delete(key.clone()));
                self.objects.remove(key);
            }
            (None, None) => {}
        }
        self.set_rejection(RejectionId::Object(key.clone()), invalid, events);
        let before = if duplicates.is_empty() {
            self.duplicates.remove(key)
        } else {
            self.duplicates
                .insert(key.clone(), duplicates.keys().cloned().collect())
        }
        .unwrap_or_default();
        (before, duplicates)
    }

    /// The rejection of a file that cannot be read (`None`: readable).
    fn set_unreadable(&mut self, path: &Path, reason: Option<String>, events: &mut Vec<Event>) {
        let name = self.display(path);
        let id = RejectionId::Document(name.clone());
        let rejection = reason.map(|error| Rejection {
            id: id.clone(),
            kind: "unknown".to_string(),
            origin: Some(name),
            error,
        });
        self.set_rejection(id, rejection, events);
    }

    /// Sets or clears one rejection, sending the change if there is one.
    fn set_rejection(
        &mut self,
        id: RejectionId,
        rejection: Option<Rejection>,
        events: &mut Vec<Event>,
    ) {
        match rejection {
            Some(r) => {
                if self.rejections.get(&id) != Some(&r) {
                    events.push(Event::Reject(r.clone()));
                    self.rejections.insert(id, r);
                }
            }
            None => {
                if self.rejections.remove(&id).is_some() {
                    events.push(Event::ClearRejection(id));
                }
            }
        }
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
        self.objects.values().map(|o| o.as_ref())
    }

    /// The rejections currently standing (after the last scan).
    pub fn rejections(&self) -> impl Iterator<Item = &Rejection> {
        self.rejections.values()
    }
}

impl Doc {
    /// A copy sharing the converted object.
    fn share(&self) -> Doc {
        Doc {
            document: self.document,
            key: self.key.clone(),
            result: self.result.clone(),
        }
    }
}

fn remove_in<V>(map: &mut BTreeMap<ObjectKey, BTreeMap<Place, V>>, key: &ObjectKey, place: &Place) {
    if let Some(inner) = map.get_mut(key) {
        inner.remove(place);
        if inner.is_empty() {
            map.remove(key);
        }
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
