//! Sources: the only code that knows where the cluster's objects come from.
//!
//! ```text
//!   Kubernetes API (watchers)  ─┐
//!                               ├─► Event ──► reconcile (one task owns the ClusterIndex)
//!   manifest directory (polls) ─┘
//! ```
//!
//! A source turns what it reads into [`Event`]s: objects converted into the engine's model
//! ([`ClusterObject`]), deletions by [`ObjectKey`], objects it could not convert
//! ([`Rejection`]) and, once, [`Event::Synced`] when everything that existed at start has been
//! read. Reconcile, compile and serve see only these events.
//!
//! A rejected object is never applied. If an earlier version of it was accepted, that version
//! stays in force (the enforcers keep what they have, as on any failure) and the rejection is
//! listed until the object is fixed or deleted ([`crate::status::Status::rejected`]).

pub mod dir;
pub mod kube;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use palisade_crds::{ClusterObject, ObjectKey};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// What identifies a rejection: the object, when its kind and name could be read, else the
/// place it was read from (a manifest document that is not YAML, a kind Palisade does not
/// read, a second definition of an object).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectionId {
    Object(ObjectKey),
    Document(String),
}

impl fmt::Display for RejectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectionId::Object(key) => key.fmt(f),
            RejectionId::Document(origin) => f.write_str(origin),
        }
    }
}

/// An object a source read but could not convert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub id: RejectionId,
    /// The object's kind (`Pod`, `NetworkPolicy`...), or `unknown`.
    pub kind: String,
    /// Where it was read: `FILE document N (line L)` for a manifest directory; `None` for
    /// the API server.
    pub origin: Option<String>,
    /// Why, naming the object and the field at fault.
    pub error: String,
}

impl Rejection {
    pub fn object(key: ObjectKey, origin: Option<String>, error: impl fmt::Display) -> Self {
        Rejection {
            kind: key.kind().to_string(),
            id: RejectionId::Object(key),
            origin,
            error: error.to_string(),
        }
    }
}

/// A rejection as the operator keeps it: with the time it was (last) reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedObject {
    pub rejection: Rejection,
    pub since: SystemTime,
}

/// What a source tells reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// An object was added or changed.
    Apply(ClusterObject),
    /// An object is gone (or, for a pod, has finished).
    Delete(ObjectKey),
    /// An object could not be converted: it is not applied (an earlier version stays).
    Reject(Rejection),
    /// A rejection no longer holds (the document was fixed or removed). `Apply` and `Delete`
    /// of an object also clear its rejection.
    ClearRejection(RejectionId),
    /// Every object that existed when the source started has been sent: reconcile may
    /// compile and publish.
    Synced,
}

/// The sending side of the event channel, shared by a source's tasks.
pub type EventSender = mpsc::Sender<Event>;

/// The sources the operator can run. Everything downstream sees only [`Event`]s.
pub enum Source {
    /// The Kubernetes API: watchers for every kind (optional CRDs picked up when installed).
    Kubernetes(kube::KubeSource),
    /// A directory of manifests, followed by polling.
    Directory(dir::DirSource),
}

impl Source {
    /// Runs the source until the event channel closes (or a fatal error).
    pub async fn run(self, events: EventSender) -> Result<(), SourceError> {
        match self {
            Source::Kubernetes(source) => source.run(events).await,
            Source::Directory(source) => source.run(events).await,
        }
    }

    /// Whether leadership comes from a Lease (only with an API server).
    pub fn needs_leader_election(&self) -> bool {
        matches!(self, Source::Kubernetes(_))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        match self {
            Source::Kubernetes(source) => source.metrics(),
            Source::Directory(source) => source.metrics(),
        }
    }
}

/// Why a source stopped.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("manifest directory {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] ::kube::Error),
}
