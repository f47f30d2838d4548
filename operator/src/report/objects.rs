//! The four report kinds behind one trait, so that each writer is written once.

use std::fmt::Debug;

use kube::Resource;
use palisade_crds::reports::{
    ClusterPolicyReport, ClusterReport, Limits, PolicyReport, Report, ReportConfiguration,
    ReportResult, Summary,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::model::SOURCE;

/// Every report Palisade writes has this name (one per namespace, one for the cluster).
pub const REPORT_NAME: &str = "palisade";
/// The label that marks Palisade's reports (to find stale ones after a restart).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "palisade");

/// A report object of either API and scope.
pub trait ReportObject:
    Resource<DynamicType = ()>
    + k8s_openapi::Resource
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// A report with these results, labelled as Palisade's.
    fn build(
        namespace: Option<&str>,
        results: Vec<ReportResult>,
        summary: Summary,
        max: usize,
    ) -> Self;
    fn results(&self) -> &[ReportResult];
}

macro_rules! wg_object {
    ($ty:ty) => {
        impl ReportObject for $ty {
            fn build(
                namespace: Option<&str>,
                results: Vec<ReportResult>,
                summary: Summary,
                _max: usize,
            ) -> Self {
                let mut r = <$ty>::named(REPORT_NAME, namespace);
                r.metadata.labels =
                    Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into());
                r.results = results;
                r.summary = summary;
                r
            }
            fn results(&self) -> &[ReportResult] {
                &self.results
            }
        }
    };
}

macro_rules! open_object {
    ($ty:ty) => {
        impl ReportObject for $ty {
            fn build(
                namespace: Option<&str>,
                results: Vec<ReportResult>,
                summary: Summary,
                max: usize,
            ) -> Self {
                let mut r = <$ty>::named(REPORT_NAME, namespace);
                r.metadata.labels =
                    Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into());
                r.source = Some(SOURCE.to_string());
                r.configuration = Some(ReportConfiguration {
                    limits: Limits {
                        max_results: u32::try_from(max).unwrap_or(u32::MAX),
                        status_filter: Vec::new(),
                    },
                });
                r.results = results;
                r.summary = summary;
                r
            }
            fn results(&self) -> &[ReportResult] {
                &self.results
            }
        }
    };
}

wg_object!(PolicyReport);
wg_object!(ClusterPolicyReport);
open_object!(Report);
open_object!(ClusterReport);
