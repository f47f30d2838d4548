//! The Kubernetes API source: one kube-runtime watcher per kind.
//!
//! - Always watched: `v1` Pods, Namespaces and Nodes, `networking.k8s.io/v1` NetworkPolicies.
//! - Watched when their CRD is installed ([`CrdKind`]): ClusterNetworkPolicy
//!   (`policy.networking.k8s.io/v1alpha2`), AdminNetworkPolicy and BaselineAdminNetworkPolicy
//!   (`policy.networking.k8s.io/v1alpha1`), Tier and TieredNetworkPolicy
//!   (`palisade.dev/v1alpha1`). Discovery asks `GET /apis/{group}/{version}` for each group
//!   version (a 404 means not installed): at start (retried until every group answers), then
//!   every `recheck` (30 s by default). A missing CRD is logged once; when it appears its
//!   watcher starts; when it goes away (its watch answers 404) its objects are deleted and
//!   the watcher stops until discovery finds the CRD again.
//! - Watchers keep no copy of the objects (the index is the cache): each object is converted
//!   as it arrives and only its key is kept, so that a re-list can tell what was deleted
//!   while the watch was down.
//! - CRD objects are read as dynamic objects and converted one by one, so one object that
//!   does not fit Palisade's types is rejected alone instead of failing the whole watch.
//! - [`Event::Synced`] is sent once every kind watched at start has been listed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use palisade_crds::convert::core;
use palisade_crds::palisade::{Tier, TieredNetworkPolicy};
use palisade_crds::upstream::v1alpha1::{AdminNetworkPolicy, BaselineAdminNetworkPolicy};
use palisade_crds::upstream::v1alpha2::ClusterNetworkPolicy;
use palisade_crds::{ClusterObject, CrdError, ObjectKey};
use palisade_policy::model::{PolicyId, PolicyKind};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{Event, EventSender, Rejection, SourceError};
use crate::metrics::Metrics;

/// The kinds Palisade reads from CRDs that may not be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrdKind {
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    Tier,
    TieredNetworkPolicy,
}

impl CrdKind {
    pub const ALL: [CrdKind; 5] = [
        CrdKind::ClusterNetworkPolicy,
        CrdKind::AdminNetworkPolicy,
        CrdKind::BaselineAdminNetworkPolicy,
        CrdKind::Tier,
        CrdKind::TieredNetworkPolicy,
    ];

    /// Group, version, kind and plural of the resource.
    pub fn resource(self) -> ApiResource {
        match self {
            CrdKind::ClusterNetworkPolicy => ApiResource::erase::<ClusterNetworkPolicy>(&()),
            CrdKind::AdminNetworkPolicy => ApiResource::erase::<AdminNetworkPolicy>(&()),
            CrdKind::BaselineAdminNetworkPolicy => {
                ApiResource::erase::<BaselineAdminNetworkPolicy>(&())
            }
            CrdKind::Tier => ApiResource::erase::<Tier>(&()),
            CrdKind::TieredNetworkPolicy => ApiResource::erase::<TieredNetworkPolicy>(&()),
        }
    }

    fn convert(self, object: &DynamicObject) -> Converted {
        fn policy(kind: PolicyKind) -> impl Fn(&ObjectMeta) -> Option<ObjectKey> {
            move |meta| {
                Some(ObjectKey::Policy(PolicyId {
                    kind,
                    namespace: None,
                    name: name(meta)?,
                }))
            }
        }
        match self {
            CrdKind::ClusterNetworkPolicy => typed(
                object,
                policy(PolicyKind::ClusterNetworkPolicy),
                |o: &ClusterNetworkPolicy| {
                    palisade_crds::cluster_network_policy(o).map(ClusterObject::Policy)
                },
            ),
            CrdKind::AdminNetworkPolicy => typed(
                object,
                policy(PolicyKind::AdminNetworkPolicy),
                |o: &AdminNetworkPolicy| {
                    palisade_crds::admin_network_policy(o).map(ClusterObject::Policy)
                },
            ),
            CrdKind::BaselineAdminNetworkPolicy => typed(
                object,
                policy(PolicyKind::BaselineAdminNetworkPolicy),
                |o: &BaselineAdminNetworkPolicy| {
                    palisade_crds::baseline_admin_network_policy(o).map(ClusterObject::Policy)
                },
            ),
            CrdKind::Tier => typed(
                object,
                |meta| name(meta).map(ObjectKey::Tier),
                |o: &Tier| palisade_crds::tier(o).map(ClusterObject::Tier),
            ),
            CrdKind::TieredNetworkPolicy => typed(
                object,
                policy(PolicyKind::TieredNetworkPolicy),
                |o: &TieredNetworkPolicy| {
                    palisade_crds::tiered_network_policy(o).map(ClusterObject::Policy)
                },
            ),
        }
    }
}

impl fmt::Display for CrdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.resource();
        write!(f, "{} ({})", r.kind, r.api_version)
    }
}

/// Whether a CRD is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    Installed,
    NotInstalled,
    /// Discovery failed (not a 404): asked again later.
    Unknown(String),
}

/// Asks the API server which of the optional kinds it serves: one
/// `GET /apis/{group}/{version}` per group version, in [`CrdKind::ALL`] order.
pub async fn discover(client: &Client) -> BTreeMap<CrdKind, Availability> {
    let mut out = BTreeMap::new();
    let mut asked: BTreeMap<String, Result<BTreeSet<String>, Option<String>>> = BTreeMap::new();
    for kind in CrdKind::ALL {
        let resource = kind.resource();
        if !asked.contains_key(&resource.api_version) {
            let answer = match client.list_api_group_resources(&resource.api_version).await {
                Ok(list) => Ok(list.resources.into_iter().map(|r| r.name).collect()),
                Err(kube::Error::Api(status)) if status.is_not_found() => Err(None),
                Err(e) => Err(Some(e.to_string())),
            };
            asked.insert(resource.api_version.clone(), answer);
        }
        let availability = match asked.get(&resource.api_version) {
            Some(Ok(plurals)) if plurals.contains(&resource.plural) => Availability::Installed,
            Some(Ok(_)) | Some(Err(None)) => Availability::NotInstalled,
            Some(Err(Some(e))) => Availability::Unknown(e.clone()),
            None => Availability::Unknown("not asked".to_string()),
        };
        out.insert(kind, availability);
    }
    out
}

/// Watches the cluster through the API server.
pub struct KubeSource {
    client: Client,
    metrics: Arc<Metrics>,
    recheck: Duration,
    retry: Duration,
}

impl KubeSource {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        KubeSource {
            client,
            metrics,
            recheck: Duration::from_secs(30),
            retry: Duration::from_secs(2),
        }
    }

    /// How often discovery looks for CRDs that were not installed (default 30 s).
    pub fn with_recheck(mut self, recheck: Duration) -> Self {
        self.recheck = recheck;
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs the watchers until the event channel closes.
    pub async fn run(self, events: EventSender) -> Result<(), SourceError> {
        // Discovery first, until every group answers: a CRD that exists but could not be
        // asked about must not be taken for missing (its policies would be left out).
        let mut available = loop {
            let found = discover(&self.client).await;
            let unknown: Vec<String> = found
                .iter()
                .filter_map(|(k, a)| match a {
                    Availability::Unknown(e) => Some(format!("{k}: {e}")),
                    _ => None,
                })
                .collect();
            if unknown.is_empty() {
                break found;
            }
            warn!(errors = ?unknown, "API discovery failed; retrying");
            self.metrics.source_error("discovery");
            tokio::select! {
                _ = tokio::time::sleep(self.retry) => {}
                _ = events.closed() => return Ok(()),
            }
        };
        for (kind, availability) in &available {
            match availability {
                Availability::Installed => info!(kind = %kind, "CRD installed; watching"),
                _ => info!(kind = %kind,
                    "CRD not installed; carrying on without it, will pick it up when it appears"),
            }
        }

        let mut initial = Vec::new();
        let mut required = Vec::new();
        macro_rules! core_watch {
            ($ty:ty, $convert:expr) => {{
                let (tx, rx) = oneshot::channel();
                initial.push(rx);
                required.push(tokio::spawn(watch(
                    Api::<$ty>::all(self.client.clone()),
                    <$ty as Resource>::kind(&()).to_string(),
                    $convert,
                    events.clone(),
                    self.metrics.clone(),
                    Some(tx),
                    false,
                )));
            }};
        }
        core_watch!(Namespace, convert_namespace);
        core_watch!(Node, convert_node);
        core_watch!(Pod, convert_pod);
        core_watch!(NetworkPolicy, convert_network_policy);

        let mut running: BTreeMap<CrdKind, JoinHandle<()>> = BTreeMap::new();
        for kind in CrdKind::ALL {
            if available.get(&kind) == Some(&Availability::Installed) {
                let (tx, rx) = oneshot::channel();
                initial.push(rx);
                running.insert(kind, self.watch_crd(kind, &events, Some(tx)));
            }
        }

        // Synced once every watcher started here has listed its kind (a watcher that ends
        // first, a CRD removed meanwhile, counts as done).
        for rx in initial {
            tokio::select! {
                _ = rx => {}
                _ = events.closed() => return Ok(()),
            }
        }
        if events.send(Event::Synced).await.is_err() {
            return Ok(());
        }

        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.recheck) => {}
                _ = events.closed() => break,
            }
            running.retain(|kind, handle| {
                let alive = !handle.is_finished();
                if !alive {
                    info!(kind = %kind, "CRD gone; its objects were removed");
                }
                alive
            });
            let found = discover(&self.client).await;
            for (kind, availability) in &found {
                let was = available.get(kind);
                match availability {
                    Availability::Installed if !running.contains_key(kind) => {
                        info!(kind = %kind, "CRD installed; watching");
                        running.insert(*kind, self.watch_crd(*kind, &events, None));
                    }
                    Availability::NotInstalled if was != Some(&Availability::NotInstalled) => {
                        info!(kind = %kind, "CRD not installed");
                    }
                    Availability::Unknown(e) => {
                        debug!(kind = %kind, error = %e, "API discovery failed; will retry");
                        self.metrics.source_error("discovery");
                    }
                    _ => {}
                }
            }
            available = found;
        }
        for handle in required.into_iter().chain(running.into_values()) {
            handle.abort();
        }
        Ok(())
    }

    fn watch_crd(
        &self,
        kind: CrdKind,
        events: &EventSender,
        synced: Option<oneshot::Sender<()>>,
    ) -> JoinHandle<()> {
        let resource = kind.resource();
        let api = Api::<DynamicObject>::all_with(self.client.clone(), &resource);
        tokio::spawn(watch(
            api,
            resource.kind.clone(),
            move |o: &DynamicObject| kind.convert(o),
            events.clone(),
            self.metrics.clone(),
            synced,
            true,
        ))
    }
}

/// An object as the watcher read it: its key (when it has a name) and its conversion.
pub struct Converted {
    pub key: Option<ObjectKey>,
    pub result: Result<Option<ClusterObject>, CrdError>,
}

fn name(meta: &ObjectMeta) -> Option<String> {
    meta.name.clone().filter(|n| !n.is_empty())
}

fn namespaced(meta: &ObjectMeta) -> Option<(String, String)> {
    let ns = meta.namespace.clone().filter(|n| !n.is_empty())?;
    Some((ns, name(meta)?))
}

pub fn convert_pod(pod: &Pod) -> Converted {
    Converted {
        key: namespaced(&pod.metadata).map(|(namespace, name)| ObjectKey::Pod { namespace, name }),
        result: core::pod(pod).map(|p| p.map(ClusterObject::Pod)),
    }
}

pub fn convert_namespace(ns: &Namespace) -> Converted {
    Converted {
        key: name(&ns.metadata).map(ObjectKey::Namespace),
        result: core::namespace(ns).map(|n| Some(ClusterObject::Namespace(n))),
    }
}

pub fn convert_node(node: &Node) -> Converted {
    Converted {
        key: name(&node.metadata).map(ObjectKey::Node),
        result: core::node(node).map(|n| Some(ClusterObject::Node(n))),
    }
}

pub fn convert_network_policy(np: &NetworkPolicy) -> Converted {
    Converted {
        key: namespaced(&np.metadata).map(|(namespace, name)| {
            ObjectKey::Policy(PolicyId {
                kind: PolicyKind::NetworkPolicy,
                namespace: Some(namespace),
                name,
            })
        }),
        result: palisade_crds::network_policy(np).map(|p| Some(ClusterObject::Policy(p))),
    }
}

/// Reads a dynamic object as `K`, then converts it.
fn typed<K: DeserializeOwned>(
    object: &DynamicObject,
    key: impl Fn(&ObjectMeta) -> Option<ObjectKey>,
    convert: impl Fn(&K) -> Result<ClusterObject, CrdError>,
) -> Converted {
    let key = key(&object.metadata);
    let name = key
        .as_ref()
        .map_or_else(|| "(unnamed)".to_string(), ToString::to_string);
    let result = serde_json::to_value(object)
        .and_then(serde_json::from_value::<K>)
        .map_err(|e| CrdError::Syntax {
            object: name,
            message: e.to_string(),
        })
        .and_then(|typed| convert(&typed))
        .map(Some);
    Converted { key, result }
}

/// Whether a watcher error says the resource is not served (its CRD was removed).
fn not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.is_not_found(),
        watcher::Error::WatchError(s) => s.is_not_found(),
        _ => false,
    }
}

/// Watches one kind, sending events until the channel closes (or, for a CRD, until its
/// resource is no longer served). `synced` is signalled after the first complete list.
pub async fn watch<K, F>(
    api: Api<K>,
    kind: String,
    convert: F,
    events: EventSender,
    metrics: Arc<Metrics>,
    mut synced: Option<oneshot::Sender<()>>,
    optional: bool,
) where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
    F: Fn(&K) -> Converted + Send + 'static,
{
    // Keys of the objects sent (accepted or rejected), and of those listed by a re-list.
    let mut known: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut listing: BTreeSet<ObjectKey> = BTreeSet::new();
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut failing = false;
    while let Some(item) = stream.next().await {
        let out: Vec<Event> = match item {
            Ok(watcher::Event::Init) => {
                listing.clear();
                Vec::new()
            }
            Ok(watcher::Event::InitApply(object)) => {
                let (key, event) = applied(&kind, &object, &convert);
                if let Some(key) = key {
                    listing.insert(key.clone());
                    known.insert(key);
                }
                event.into_iter().collect()
            }
            Ok(watcher::Event::InitDone) => {
                let gone: Vec<Event> = known
                    .difference(&listing)
                    .cloned()
                    .map(Event::Delete)
                    .collect();
                known = std::mem::take(&mut listing);
                if let Some(tx) = synced.take() {
                    debug!(kind = %kind, objects = known.len(), "listed");
                    let _ = tx.send(());
                }
                gone
            }
            Ok(watcher::Event::Apply(object)) => {
                let (key, event) = applied(&kind, &object, &convert);
                if let Some(key) = key {
                    known.insert(key);
                }
                event.into_iter().collect()
            }
            Ok(watcher::Event::Delete(object)) => match convert(&object).key {
                Some(key) => {
                    known.remove(&key);
                    vec![Event::Delete(key)]
                }
                None => Vec::new(),
            },
            Err(e) => {
                metrics.source_error(&kind);
                if optional && not_found(&e) {
                    info!(kind = %kind, "resource no longer served; removing its objects");
                    let gone: Vec<Event> = known.iter().cloned().map(Event::Delete).collect();
                    for event in gone {
                        if events.send(event).await.is_err() {
                            break;
                        }
                    }
                    return;
                }
                if !failing {
                    warn!(kind = %kind, error = %e, "watch failed; retrying with backoff");
                }
                failing = true;
                continue;
            }
        };
        if failing {
            info!(kind = %kind, "watch recovered");
            failing = false;
        }
        for event in out {
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// The event for an object added or changed, with its key.
fn applied<K, F>(kind: &str, object: &K, convert: &F) -> (Option<ObjectKey>, Option<Event>)
where
    F: Fn(&K) -> Converted,
{
    let converted = convert(object);
    let Some(key) = converted.key else {
        warn!(kind = %kind, "object without a name ignored");
        return (None, None);
    };
    let event = match converted.result {
        Ok(Some(object)) => Event::Apply(object),
        Ok(None) => Event::Delete(key.clone()),
        Err(e) => Event::Reject(Rejection::object(key.clone(), None, e)),
    };
    (Some(key), Some(event))
}

#[cfg(test)]
mod tests;
