//! Writes the reports as YAML files into a folder (the manifest-directory source has no API
//! server): `policyreport.NAMESPACE.yaml` and `clusterpolicyreport.yaml` (wgpolicyk8s.io),
//! `report.NAMESPACE.yaml` and `clusterreport.yaml` (openreports.io), each the object a cluster
//! would hold. A file is rewritten (atomically: temporary name, then rename) only when its
//! content changed; files of reports no longer wanted are removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use palisade_crds::reports::{
    ClusterPolicyReport, ClusterReport, PolicyReport, Report, ReportResult,
};

use super::kube::Written;
use super::model::{content, results, ReportSet, Scope};
use super::objects::ReportObject;
use super::{ReportApi, ReportError};

/// File-name prefixes of the namespaced kinds and names of the cluster kinds.
const WG: (&str, &str) = ("policyreport.", "clusterpolicyreport.yaml");
const OPEN: (&str, &str) = ("report.", "clusterreport.yaml");

pub struct DirWriter {
    dir: PathBuf,
    api: ReportApi,
    max_results: usize,
    /// Content of each file written (timestamps removed); `None` until the folder is read.
    written: Option<BTreeMap<PathBuf, Vec<ReportResult>>>,
}

/// The file a report of `scope` goes to.
pub fn file_name(openreports: bool, scope: &Scope) -> String {
    let (prefix, cluster) = if openreports { OPEN } else { WG };
    match scope {
        Scope::Namespace(ns) => format!("{prefix}{ns}.yaml"),
        Scope::Cluster => cluster.to_string(),
    }
}

fn is_ours(name: &str, openreports: bool) -> bool {
    let (prefix, cluster) = if openreports { OPEN } else { WG };
    name == cluster || (name.starts_with(prefix) && name.ends_with(".yaml"))
}

impl DirWriter {
    pub fn new(dir: PathBuf, api: ReportApi, max_results: usize) -> Self {
        DirWriter {
            dir,
            api,
            max_results,
            written: None,
        }
    }

    pub fn sync(&mut self, set: &ReportSet, now: SystemTime) -> Result<Written, ReportError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReportError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        if self.written.is_none() {
            self.written = Some(self.load());
        }
        let mut out = Written::default();
        let mut wanted = BTreeSet::new();
        for openreports in [false, true] {
            if !(if openreports {
                self.api.openreports()
            } else {
                self.api.wgpolicyk8s()
            }) {
                continue;
            }
            for (scope, findings) in &set.reports {
                let path = self.dir.join(file_name(openreports, scope));
                wanted.insert(path.clone());
                let (results, summary) = results(findings, now);
                let new_content = content(&results);
                if self.written.as_ref().and_then(|w| w.get(&path)) == Some(&new_content) {
                    continue;
                }
                let ns = match scope {
                    Scope::Namespace(ns) => Some(ns.as_str()),
                    Scope::Cluster => None,
                };
                let text = match (openreports, ns) {
                    (false, Some(_)) => {
                        yaml(&PolicyReport::build(ns, results, summary, self.max_results))
                    }
                    (false, None) => yaml(&ClusterPolicyReport::build(
                        ns,
                        results,
                        summary,
                        self.max_results,
                    )),
                    (true, Some(_)) => yaml(&Report::build(ns, results, summary, self.max_results)),
                    (true, None) => yaml(&ClusterReport::build(
                        ns,
                        results,
                        summary,
                        self.max_results,
                    )),
                }?;
                crate::files::write_atomically(&path, &text, 0o644).map_err(io(&path))?;
                out.applied.push(path.display().to_string());
                self.written
                    .get_or_insert_with(BTreeMap::new)
                    .insert(path, new_content);
            }
        }
        let stale: Vec<PathBuf> = self
            .written
            .iter()
            .flat_map(|w| w.keys())
            .filter(|p| !wanted.contains(*p))
            .cloned()
            .collect();
        for path in stale {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
            out.deleted.push(path.display().to_string());
            if let Some(w) = self.written.as_mut() {
                w.remove(&path);
            }
        }
        Ok(out)
    }

    /// Reads the report files already in the folder (a restart does not rewrite them when
    /// nothing changed, and removes the stale ones). A file that cannot be read counts as
    /// different, so it is rewritten.
    fn load(&self) -> BTreeMap<PathBuf, Vec<ReportResult>> {
        let mut written = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return written;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let open = is_ours(&name, true);
            if !(open || is_ours(&name, false)) {
                continue;
            }
            let path = entry.path();
            let parsed = std::fs::read_to_string(&path).ok().and_then(|text| {
                serde_yaml::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("results").cloned())
                    .and_then(|r| serde_json::from_value::<Vec<ReportResult>>(r).ok())
            });
            // An unreadable file gets a content no report has, so it is rewritten.
            let unreadable = || {
                vec![ReportResult {
                    policy: "<unreadable>".into(),
                    ..ReportResult::default()
                }]
            };
            written.insert(path, parsed.map_or_else(unreadable, |r| content(&r)));
        }
        written
    }
}

fn yaml<T: serde::Serialize>(object: &T) -> Result<String, ReportError> {
    serde_yaml::to_string(object).map_err(|e| ReportError::Encode(e.to_string()))
}
