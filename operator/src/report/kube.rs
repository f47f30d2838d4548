//! Writes the reports to the API server: server-side apply (field manager `palisade`) of each
//! report whose content changed since it was last written (timestamps do not count), deletion
//! of Palisade's reports that are no longer wanted, and installation of the report CRDs when
//! they are absent (a CRD that exists, whoever installed it, is never touched).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Resource;
use palisade_crds::reports::{
    self, ClusterPolicyReport, ClusterReport, PolicyReport, Report, ReportResult,
};
use tracing::{debug, info, warn};

use super::model::{content, results, ReportSet, Scope};
use super::objects::{ReportObject, MANAGED_BY, REPORT_NAME};
use super::{ReportApi, ReportError};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "palisade";

/// `(kind, namespace)` of one report (all are named [`REPORT_NAME`]).
type Key = (&'static str, Option<String>);

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub applied: Vec<String>,
    pub deleted: Vec<String>,
}

/// Writes reports with a client; remembers what it last wrote.
pub struct KubeWriter {
    client: kube::Client,
    api: ReportApi,
    max_results: usize,
    /// What each report of Palisade's holds now (timestamps removed); `None` until listed.
    written: Option<BTreeMap<Key, Vec<ReportResult>>>,
}

impl KubeWriter {
    pub fn new(client: kube::Client, api: ReportApi, max_results: usize) -> Self {
        KubeWriter {
            client,
            api,
            max_results,
            written: None,
        }
    }

    /// Forgets what was written (after losing the lead: another replica may write meanwhile).
    pub fn forget(&mut self) {
        self.written = None;
    }

    /// Creates the CRDs of the chosen API(s) that are not installed.
    pub async fn install_crds(&self) -> Result<Vec<String>, ReportError> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let mut created = Vec::new();
        for crd in reports::crds() {
            if !self.api.includes(&crd.spec.group) {
                continue;
            }
            let name = crd.metadata.name.clone().unwrap_or_default();
            if api
                .get_opt(&name)
                .await
                .map_err(ReportError::kube(&name))?
                .is_some()
            {
                debug!(crd = %name, "report CRD installed already: left as it is");
                continue;
            }
            match api.create(&PostParams::default(), &crd).await {
                Ok(_) => {
                    info!(crd = %name, "report CRD installed");
                    created.push(name);
                }
                // Installed by someone else in between: theirs stays.
                Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                Err(e) => return Err(ReportError::kube(&name)(e)),
            }
        }
        Ok(created)
    }

    /// Brings the API server's reports in line with `set`.
    pub async fn sync(&mut self, set: &ReportSet, now: SystemTime) -> Result<Written, ReportError> {
        if self.written.is_none() {
            self.written = Some(self.load().await?);
        }
        let mut out = Written::default();
        let mut first_error = None;
        if self.api.wgpolicyk8s() {
            self.sync_kinds::<PolicyReport, ClusterPolicyReport>(
                set,
                now,
                &mut out,
                &mut first_error,
            )
            .await;
        }
        if self.api.openreports() {
            self.sync_kinds::<Report, ClusterReport>(set, now, &mut out, &mut first_error)
                .await;
        }
        // Reports of the API not written (an earlier `--report-api`) would stay frozen
        // while looking current: none of them is wanted.
        if !self.api.wgpolicyk8s() {
            self.delete_foreign::<PolicyReport, ClusterPolicyReport>(&mut out)
                .await;
        }
        if !self.api.openreports() {
            self.delete_foreign::<Report, ClusterReport>(&mut out).await;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Lists Palisade's existing reports (by label), so a restarted leader neither rewrites
    /// unchanged reports nor forgets stale ones; the API not written is listed too, so that
    /// the reports an earlier `--report-api` left there are deleted.
    async fn load(&self) -> Result<BTreeMap<Key, Vec<ReportResult>>, ReportError> {
        let mut written = BTreeMap::new();
        let (wg, or) = (self.api.wgpolicyk8s(), self.api.openreports());
        self.load_kind::<PolicyReport>(&mut written, wg).await?;
        self.load_kind::<ClusterPolicyReport>(&mut written, wg)
            .await?;
        self.load_kind::<Report>(&mut written, or).await?;
        self.load_kind::<ClusterReport>(&mut written, or).await?;
        Ok(written)
    }

    /// Lists `K`'s reports of Palisade's. For an API not written (`written_api` false), no
    /// failure is an error: an API server that does not serve it (404: its CRD is absent,
    /// so there is nothing to delete) is normal, any other failure (403: an RBAC without
    /// that API; that API's server down) is a warning.
    async fn load_kind<K: ReportObject>(
        &self,
        written: &mut BTreeMap<Key, Vec<ReportResult>>,
        written_api: bool,
    ) -> Result<(), ReportError> {
        let api: Api<K> = Api::all(self.client.clone());
        let params = ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let list = match api.list(&params).await {
            Ok(list) => list,
            Err(kube::Error::Api(s)) if !written_api && s.is_not_found() => {
                debug!(
                    kind = K::KIND,
                    "report API not served: no old report to delete"
                );
                return Ok(());
            }
            // Forbidden, or that API's server failing: the reports of the API written
            // must not wait for it.
            Err(e) if !written_api => {
                warn!(
                    kind = K::KIND,
                    error = %e,
                    "cannot list the {} of the report API not written (--report-api): \
                     reports an earlier setting left there stay until the next time this \
                     replica takes the lead, or until deleted by hand",
                    K::plural(&())
                );
                return Ok(());
            }
            Err(e) => return Err(ReportError::kube(&K::plural(&()))(e)),
        };
        for item in list.items {
            if item.meta().name.as_deref() != Some(REPORT_NAME) {
                continue;
            }
            let kind = kind_of::<K>();
            written.insert(
                (kind, item.meta().namespace.clone()),
                content(item.results()),
            );
        }
        Ok(())
    }

    async fn sync_kinds<N, C>(
        &mut self,
        set: &ReportSet,
        now: SystemTime,
        out: &mut Written,
        first_error: &mut Option<ReportError>,
    ) where
        N: ReportObject + Resource<Scope = NamespaceResourceScope>,
        C: ReportObject,
    {
        let mut wanted: BTreeSet<Key> = BTreeSet::new();
        for (scope, findings) in &set.reports {
            let (results, summary) = results(findings, now);
            let (key, outcome) = match scope {
                Scope::Namespace(ns) => {
                    let key = (kind_of::<N>(), Some(ns.clone()));
                    if self.unchanged(&key, &results) {
                        wanted.insert(key);
                        continue;
                    }
                    let object = N::build(Some(ns), results.clone(), summary, self.max_results);
                    let api: Api<N> = Api::namespaced(self.client.clone(), ns);
                    (key, apply(&api, &object).await)
                }
                Scope::Cluster => {
                    let key = (kind_of::<C>(), None);
                    if self.unchanged(&key, &results) {
                        wanted.insert(key);
                        continue;
                    }
                    let object = C::build(None, results.clone(), summary, self.max_results);
                    let api: Api<C> = Api::all(self.client.clone());
                    (key, apply(&api, &object).await)
                }
            };
            wanted.insert(key.clone());
            let written = self.written.get_or_insert_with(BTreeMap::new);
            match outcome {
                Ok(()) => {
                    out.applied.push(describe(&key));
                    written.insert(key, content(&results));
                }
                Err(e) => {
                    // Unknown now: written again next time.
                    written.remove(&key);
                    first_error.get_or_insert(e);
                }
            }
        }
        self.delete_stale::<N, C>(&wanted, out, first_error).await;
    }

    /// Deletes what an earlier `--report-api` left in an API not written (kinds `N` and
    /// `C`). A failure is a warning, not the sync's error (the reports of the API written
    /// must not wait for the other API), and those reports are tried again the next time
    /// this replica takes the lead (they are listed again then).
    async fn delete_foreign<N, C>(&mut self, out: &mut Written)
    where
        N: ReportObject + Resource<Scope = NamespaceResourceScope>,
        C: ReportObject,
    {
        let mut error = None;
        self.delete_stale::<N, C>(&BTreeSet::new(), out, &mut error)
            .await;
        if let Some(e) = error {
            warn!(
                error = %e,
                "could not delete a report of the report API not written (--report-api): \
                 tried again the next time this replica takes the lead"
            );
            if let Some(w) = self.written.as_mut() {
                w.retain(|k, _| k.0 != kind_of::<N>() && k.0 != kind_of::<C>());
            }
        }
    }

    /// Deletes the reports of kinds `N` and `C` that were written (or found) and are not
    /// `wanted`.
    async fn delete_stale<N, C>(
        &mut self,
        wanted: &BTreeSet<Key>,
        out: &mut Written,
        first_error: &mut Option<ReportError>,
    ) where
        N: ReportObject + Resource<Scope = NamespaceResourceScope>,
        C: ReportObject,
    {
        let stale: Vec<Key> = self
            .written
            .iter()
            .flat_map(|w| w.keys())
            .filter(|k| (k.0 == kind_of::<N>() || k.0 == kind_of::<C>()) && !wanted.contains(k))
            .cloned()
            .collect();
        for key in stale {
            let result = match &key.1 {
                Some(ns) => delete(&Api::<N>::namespaced(self.client.clone(), ns)).await,
                None => delete(&Api::<C>::all(self.client.clone())).await,
            };
            match result {
                Ok(()) => {
                    out.deleted.push(describe(&key));
                    if let Some(w) = self.written.as_mut() {
                        w.remove(&key);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }

    fn unchanged(&self, key: &Key, results: &[ReportResult]) -> bool {
        self.written
            .as_ref()
            .and_then(|w| w.get(key))
            .is_some_and(|old| *old == content(results))
    }
}

/// The kind of `K`, static so that the keys stay small.
fn kind_of<K: k8s_openapi::Resource>() -> &'static str {
    K::KIND
}

fn describe(key: &Key) -> String {
    match &key.1 {
        Some(ns) => format!("{} {ns}/{REPORT_NAME}", key.0),
        None => format!("{} {REPORT_NAME}", key.0),
    }
}

async fn apply<K: ReportObject>(api: &Api<K>, object: &K) -> Result<(), ReportError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(REPORT_NAME, &params, &Patch::Apply(object))
        .await
        .map_err(ReportError::kube(&describe_object(object)))?;
    Ok(())
}

async fn delete<K: ReportObject>(api: &Api<K>) -> Result<(), ReportError> {
    match api.delete(REPORT_NAME, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        // Gone already: what was wanted.
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(ReportError::kube(&format!(
            "{} {REPORT_NAME}",
            K::kind(&())
        ))(e)),
    }
}

fn describe_object<K: ReportObject>(object: &K) -> String {
    match &object.meta().namespace {
        Some(ns) => format!("{} {ns}/{REPORT_NAME}", K::kind(&())),
        None => format!("{} {REPORT_NAME}", K::kind(&())),
    }
}
