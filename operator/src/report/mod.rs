//! Policy reports: what Palisade enforces, where, and what it does not.
//!
//! ```text
//!   source events ──tee──► reconcile (unchanged)
//!                   └────► mirror (the reports' own copy of the cluster) ──► engine
//!   engine + hub (realised versions per node) + rejected objects + audit counts
//!        ──► build (findings per namespace / cluster) ──► writer: API (SSA) or YAML files
//! ```
//!
//! One internal model ([`model`]) and writers for `wgpolicyk8s.io/v1alpha2`
//! (PolicyReport / ClusterPolicyReport), `openreports.io/v1alpha1` (Report / ClusterReport) or
//! both ([`ReportApi`]). Every `interval` the reports are rebuilt; a report is written only when
//! its content changed (a timestamp-only change is not a change); reports no longer wanted are
//! deleted. Only the leader writes. What each result means: the README, "Policy reports".

pub mod build;
pub mod dir;
pub mod kube;
pub mod lint;
pub mod mirror;
pub mod model;
pub mod objects;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use palisade_policy::engine::Engine;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::hub::Hub;
use crate::source::Event;
use crate::status::Status;
use build::{Inputs, NodeView};
use mirror::Mirror;
use model::ReportSet;

/// Which report API(s) to write (`--report-api`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReportApi {
    /// `wgpolicyk8s.io/v1alpha2` PolicyReport and ClusterPolicyReport (the default:
    /// `kubectl get policyreports` works out of the box).
    #[default]
    Wgpolicyk8s,
    /// `openreports.io/v1alpha1` Report and ClusterReport.
    Openreports,
    Both,
}

impl ReportApi {
    pub fn wgpolicyk8s(self) -> bool {
        matches!(self, ReportApi::Wgpolicyk8s | ReportApi::Both)
    }

    pub fn openreports(self) -> bool {
        matches!(self, ReportApi::Openreports | ReportApi::Both)
    }

    /// Whether the API group is one this setting writes.
    pub fn includes(self, group: &str) -> bool {
        (group == palisade_crds::reports::WGPOLICY_GROUP && self.wgpolicyk8s())
            || (group == palisade_crds::reports::OPENREPORTS_GROUP && self.openreports())
    }
}

impl FromStr for ReportApi {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wgpolicyk8s" | "wgpolicyk8s.io" => Ok(ReportApi::Wgpolicyk8s),
            "openreports" | "openreports.io" => Ok(ReportApi::Openreports),
            "both" => Ok(ReportApi::Both),
            _ => Err(format!("{s:?}: expected wgpolicyk8s, openreports or both")),
        }
    }
}

/// Report settings (`--report-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportSettings {
    /// Write reports at all.
    pub enabled: bool,
    pub api: ReportApi,
    /// Create the report CRDs when they are absent (never touches installed ones).
    pub install_crds: bool,
    /// One result per namespace listing the pods no policy selects for ingress.
    pub unprotected_pods: bool,
    /// At most this many results per report (the rest summed up in one result).
    pub max_results: usize,
    /// How often the reports are rebuilt.
    pub interval: Duration,
    /// How often the audit log's denied counts are read again.
    pub denied_every: Duration,
    /// Where the manifest-directory source writes its reports (YAML files); `None`: not written.
    pub dir: Option<PathBuf>,
}

impl Default for ReportSettings {
    fn default() -> Self {
        ReportSettings {
            enabled: true,
            api: ReportApi::default(),
            install_crds: true,
            unprotected_pods: true,
            max_results: 1000,
            interval: Duration::from_secs(1),
            denied_every: Duration::from_secs(30),
            dir: None,
        }
    }
}

/// The command-line flags of the reports (flattened into `palisade-operator`'s).
#[derive(Clone, Debug, clap::Args)]
pub struct ReportArgs {
    /// Which report API to write: wgpolicyk8s (PolicyReport, ClusterPolicyReport),
    /// openreports (Report, ClusterReport) or both.
    #[arg(
        long,
        default_value = "wgpolicyk8s",
        value_name = "wgpolicyk8s|openreports|both"
    )]
    pub report_api: ReportApi,

    /// Write no policy reports at all.
    #[arg(long)]
    pub no_reports: bool,

    /// Do not create the report CRDs when they are absent (installed ones are never touched).
    #[arg(long)]
    pub no_report_crds: bool,

    /// Leave out the per-namespace result listing pods no policy selects for ingress.
    #[arg(long)]
    pub no_unprotected_pods: bool,

    /// At most this many results per report (the rest are counted in one result).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub report_max_results: usize,

    /// How often the reports are rebuilt (milliseconds; written only when changed).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub report_interval_ms: u64,

    /// How often the denied counts of the last hour are read from the audit log
    /// (milliseconds).
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub report_denied_every_ms: u64,

    /// With the manifest-directory source: the folder the reports are written to as YAML.
    #[arg(long, value_name = "FOLDER")]
    pub report_dir: Option<PathBuf>,
}

impl ReportArgs {
    pub fn settings(&self) -> ReportSettings {
        ReportSettings {
            enabled: !self.no_reports,
            api: self.report_api,
            install_crds: !self.no_report_crds,
            unprotected_pods: !self.no_unprotected_pods,
            max_results: self.report_max_results.max(1),
            interval: Duration::from_millis(self.report_interval_ms.max(10)),
            denied_every: Duration::from_millis(self.report_denied_every_ms.max(10)),
            dir: self.report_dir.clone(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("{object}: {source}")]
    Kube {
        object: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode a report: {0}")]
    Encode(String),
    /// `--report-dir` with the Kubernetes source: the reports go to the API server there, so
    /// the folder would silently stay empty.
    #[error(
        "--report-dir {0} is for the manifest-directory source (--source dir:PATH); with the \
         Kubernetes source the reports are written to the API server: remove --report-dir"
    )]
    DirWithKubernetes(PathBuf),
}

impl ReportError {
    fn kube(object: &str) -> impl FnOnce(::kube::Error) -> ReportError + '_ {
        move |source| ReportError::Kube {
            object: object.to_string(),
            source,
        }
    }
}

/// Denied connections in the last hour, per policy (`Kind ns/name`, as `PolicyId` displays),
/// from the audit log. Shown as the `deniedLastHour` property of each policy's result.
pub trait DeniedCounts: Send + Sync {
    fn denied_last_hour(&self) -> BoxFuture<'_, BTreeMap<String, u64>>;
}

/// No audit log: no counts.
pub struct NoAudit;

impl DeniedCounts for NoAudit {
    fn denied_last_hour(&self) -> BoxFuture<'_, BTreeMap<String, u64>> {
        Box::pin(async { BTreeMap::new() })
    }
}

/// Where the reports go.
pub enum Writer {
    Kube(kube::KubeWriter),
    Dir(dir::DirWriter),
}

impl Writer {
    async fn sync(
        &mut self,
        set: &ReportSet,
        now: SystemTime,
    ) -> Result<kube::Written, ReportError> {
        match self {
            Writer::Kube(w) => w.sync(set, now).await,
            Writer::Dir(w) => w.sync(set, now),
        }
    }

    fn forget(&mut self) {
        if let Writer::Kube(w) = self {
            w.forget();
        }
    }
}

/// The sender the source should use, and the report task (`None` when reports are off or
/// have nowhere to go).
pub type Started = (mpsc::Sender<Event>, Option<JoinHandle<()>>);

/// Puts a tee in front of reconcile's event channel. `--report-dir` with a client (the
/// Kubernetes source) is refused: the README documents it for the manifest directory only.
pub fn start(
    settings: &ReportSettings,
    hub: Arc<Hub>,
    status: Arc<Status>,
    client: Option<::kube::Client>,
    denied: Arc<dyn DeniedCounts>,
    reconcile: mpsc::Sender<Event>,
) -> Result<Started, ReportError> {
    let writer = match (&client, &settings.dir) {
        (Some(_), Some(dir)) => return Err(ReportError::DirWithKubernetes(dir.clone())),
        _ if !settings.enabled => None,
        (Some(client), None) => Some(Writer::Kube(kube::KubeWriter::new(
            client.clone(),
            settings.api,
            settings.max_results,
        ))),
        (None, Some(dir)) => Some(Writer::Dir(dir::DirWriter::new(
            dir.clone(),
            settings.api,
            settings.max_results,
        ))),
        (None, None) => {
            info!("no --report-dir: policy reports are not written");
            None
        }
    };
    let Some(writer) = writer else {
        return Ok((reconcile, None));
    };
    let (source_tx, mut source_rx) = mpsc::channel::<Event>(1024);
    // Unbounded: the report task only stores events, and must never hold reconcile back.
    let (mirror_tx, mirror_rx) = mpsc::unbounded_channel::<Event>();
    let tee = async move {
        while let Some(event) = source_rx.recv().await {
            // A report task that ended leaves reconcile fed.
            let _ = mirror_tx.send(event.clone());
            if reconcile.send(event).await.is_err() {
                break;
            }
        }
    };
    let reporter = Reporter {
        settings: settings.clone(),
        hub,
        status,
        denied,
        writer,
        mirror: Mirror::default(),
        engine: None,
        engine_generation: None,
        since: BTreeMap::new(),
        crds_checked: false,
        last_error: None,
        written: None,
        denied_cache: None,
    };
    let task = tokio::spawn(async move {
        tokio::spawn(tee);
        reporter.run(mirror_rx).await;
    });
    Ok((source_tx, Some(task)))
}

/// The report task's state.
pub struct Reporter {
    settings: ReportSettings,
    hub: Arc<Hub>,
    status: Arc<Status>,
    denied: Arc<dyn DeniedCounts>,
    writer: Writer,
    mirror: Mirror,
    engine: Option<Result<Engine, String>>,
    engine_generation: Option<u64>,
    /// Per node: the desired version seen and since when.
    since: BTreeMap<String, (u64, SystemTime)>,
    crds_checked: bool,
    /// The last write error logged.
    last_error: Option<String>,
    /// What the reports written last were built from.
    written: Option<Built>,
    /// The denied counts last read, and when.
    denied_cache: Option<(std::time::Instant, BTreeMap<String, u64>)>,
}

/// Everything a build reads that can change.
#[derive(Clone, Debug, PartialEq)]
struct Built {
    generation: u64,
    nodes: BTreeMap<String, NodeView>,
    rejected: Vec<crate::source::RejectedObject>,
    denied: BTreeMap<String, u64>,
}

impl Reporter {
    async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = false;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.mirror.apply(event),
                    None => return,
                },
                _ = tick.tick() => {
                    let leader = self.hub.is_leader();
                    if leading && !leader {
                        // Another replica writes now: what was written is no longer known.
                        self.writer.forget();
                        self.written = None;
                    }
                    leading = leader;
                    if leader && self.mirror.is_synced() {
                        self.once().await;
                    }
                }
            }
        }
    }

    /// One round: rebuild what changed, write what differs.
    async fn once(&mut self) {
        if !self.crds_checked {
            if let Writer::Kube(w) = &self.writer {
                if self.settings.install_crds {
                    if let Err(e) = w.install_crds().await {
                        warn!(error = %e, "cannot install the report CRDs (retried)");
                        return;
                    }
                }
            }
            self.crds_checked = true;
        }
        let now = SystemTime::now();
        let nodes = self.node_views(now);
        let rejected = self.status.rejected();
        let denied = self.denied_counts().await;
        let generation = self.mirror.generation();
        // Nothing the reports are made of changed since they were written: nothing to do
        // (a build only depends on these; the time is only the results' timestamp).
        let inputs = Built {
            generation,
            nodes,
            rejected,
            denied,
        };
        if self.written.as_ref() == Some(&inputs) {
            return;
        }
        // Indexing and the lints are CPU work (a large cluster's take a while): on a
        // multi-threaded runtime this worker hands its other tasks to the others meanwhile.
        let set = crate::reconcile::in_place(|| {
            if self.engine_generation != Some(generation) {
                let cluster = self.mirror.cluster();
                self.engine = Some(Engine::new(cluster).map_err(|e| e.to_string()));
                self.engine_generation = Some(generation);
            }
            let engine = match &self.engine {
                Some(Ok(engine)) => Ok(engine),
                Some(Err(e)) => Err(e.clone()),
                None => Err("not indexed yet".to_string()),
            };
            let mut set = build::build(&Inputs {
                engine,
                nodes: &inputs.nodes,
                rejected: &inputs.rejected,
                denied: &inputs.denied,
                unprotected_pods: self.settings.unprotected_pods,
            });
            set.finish(self.settings.max_results);
            set
        });
        match self.writer.sync(&set, now).await {
            Ok(w) => {
                self.last_error = None;
                self.written = Some(inputs);
                if !w.applied.is_empty() || !w.deleted.is_empty() {
                    debug!(applied = ?w.applied, deleted = ?w.deleted, "policy reports written");
                }
            }
            Err(e) => {
                self.written = None;
                // Said once per distinct error (a missing CRD would otherwise log every tick).
                let text = e.to_string();
                if self.last_error.as_deref() != Some(text.as_str()) {
                    warn!(error = %text, "cannot write policy reports (retried every interval)");
                    self.last_error = Some(text);
                }
            }
        }
    }

    /// The audit log's denied counts, asked at most every `denied_every` (a query over an
    /// hour of decisions is not for every interval).
    async fn denied_counts(&mut self) -> BTreeMap<String, u64> {
        if let Some((at, counts)) = &self.denied_cache {
            if at.elapsed() < self.settings.denied_every {
                return counts.clone();
            }
        }
        let counts = self.denied.denied_last_hour().await;
        self.denied_cache = Some((std::time::Instant::now(), counts.clone()));
        counts
    }

    /// Each node's desired version (and since when) and what its enforcer reported.
    fn node_views(&mut self, now: SystemTime) -> BTreeMap<String, NodeView> {
        let desired = self.hub.desired_versions();
        let realised = self.hub.realisation();
        self.since.retain(|n, _| desired.contains_key(n));
        desired
            .into_iter()
            .map(|(node, version)| {
                let since = match self.since.get(&node) {
                    Some(&(v, t)) if v == version => t,
                    _ => {
                        self.since.insert(node.clone(), (version, now));
                        now
                    }
                };
                let view = NodeView {
                    desired: version,
                    desired_since: since,
                    realised: realised.get(&node).cloned(),
                };
                (node, view)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
