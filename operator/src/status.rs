//! What the operator knows about its own state, for `/readyz`, reports and metrics: whether
//! the source has read everything that existed at start, and the objects it rejected.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::source::{RejectedObject, Rejection, RejectionId};

/// Shared between reconcile (which writes it), the health server and reports (which read it).
#[derive(Debug)]
pub struct Status {
    synced: watch::Sender<bool>,
    rejections: Mutex<BTreeMap<RejectionId, RejectedObject>>,
    commits: Mutex<Commits>,
}

/// Commits of the index so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commits {
    /// Successful commits.
    pub count: u64,
    /// The last one: when, how long it took, how many node states it published.
    pub last: Option<(SystemTime, Duration, usize)>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            synced: watch::channel(false).0,
            rejections: Mutex::new(BTreeMap::new()),
            commits: Mutex::new(Commits::default()),
        }
    }
}

impl Status {
    pub fn new() -> Arc<Status> {
        Arc::new(Status::default())
    }

    /// Whether the source has read every object that existed when it started (and the index
    /// holding them has been committed once).
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Follows [`Status::is_synced`].
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    pub(crate) fn set_synced(&self) {
        self.synced.send_replace(true);
    }

    /// Commits of the index so far.
    pub fn commits(&self) -> Commits {
        self.commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn record_commit(&self, took: Duration, published: usize) {
        let mut commits = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        commits.count += 1;
        commits.last = Some((SystemTime::now(), took, published));
    }

    /// The objects rejected now, with why and where, in a stable order.
    pub fn rejected(&self) -> Vec<RejectedObject> {
        self.lock().values().cloned().collect()
    }

    /// Records a rejection; returns whether it is new or different.
    pub(crate) fn reject(&self, rejection: Rejection) -> bool {
        let mut map = self.lock();
        if map
            .get(&rejection.id)
            .is_some_and(|r| r.rejection == rejection)
        {
            return false;
        }
        map.insert(
            rejection.id.clone(),
            RejectedObject {
                rejection,
                since: SystemTime::now(),
            },
        );
        true
    }

    /// Removes a rejection; returns it if there was one.
    pub(crate) fn clear(&self, id: &RejectionId) -> Option<RejectedObject> {
        self.lock().remove(id)
    }

    /// Rejections standing now, per kind.
    pub(crate) fn rejected_per_kind(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.lock().values() {
            *out.entry(r.rejection.kind.clone()).or_insert(0) += 1;
        }
        out
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<RejectionId, RejectedObject>> {
        self.rejections.lock().unwrap_or_else(|e| e.into_inner())
    }
}
