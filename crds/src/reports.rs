//! Policy report types Palisade writes (it never reads them back for enforcement):
//!
//! - `wgpolicyk8s.io/v1alpha2` [`PolicyReport`] (namespaced, short name `polr`) and
//!   [`ClusterPolicyReport`] (`cpolr`): the Kubernetes Policy Working Group API that Kyverno's
//!   Policy Reporter and other consumers read;
//! - `openreports.io/v1alpha1` [`Report`] (`reps`) and [`ClusterReport`] (`creps`): the same
//!   shape under its new name, plus a report-level `source` and `configuration.limits`.
//!
//! These objects have no `spec`: `scope`, `scopeSelector`, `summary` and `results` sit at the top
//! level, so `kube::CustomResource` cannot derive them; the `k8s_openapi` traits are implemented
//! by hand below and the CRD schemas are written out field by field to match the published CRDs
//! (printer columns included: `kubectl get policyreports -A` shows PASS, FAIL, WARN, ERROR, SKIP).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The Policy Working Group's API group.
pub const WGPOLICY_GROUP: &str = "wgpolicyk8s.io";
/// Its version Palisade writes.
pub const WGPOLICY_VERSION: &str = "v1alpha2";
/// The OpenReports API group.
pub const OPENREPORTS_GROUP: &str = "openreports.io";
/// Its version Palisade writes.
pub const OPENREPORTS_VERSION: &str = "v1alpha1";

/// The outcome of one result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultKind {
    Pass,
    Fail,
    Warn,
    Error,
    Skip,
}

impl ResultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultKind::Pass => "pass",
            ResultKind::Fail => "fail",
            ResultKind::Warn => "warn",
            ResultKind::Error => "error",
            ResultKind::Skip => "skip",
        }
    }
}

/// How critical a result is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

/// Counts of results per outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub pass: u32,
    #[serde(default)]
    pub fail: u32,
    #[serde(default)]
    pub warn: u32,
    #[serde(default)]
    pub error: u32,
    #[serde(default)]
    pub skip: u32,
}

impl Summary {
    /// Counts the results.
    pub fn of(results: &[ReportResult]) -> Summary {
        let mut s = Summary::default();
        for r in results {
            let slot = match r.result {
                Some(ResultKind::Pass) => &mut s.pass,
                Some(ResultKind::Fail) => &mut s.fail,
                Some(ResultKind::Warn) => &mut s.warn,
                Some(ResultKind::Error) => &mut s.error,
                Some(ResultKind::Skip) => &mut s.skip,
                None => continue,
            };
            *slot = slot.saturating_add(1);
        }
        s
    }
}

/// `metav1.Timestamp`: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: i32,
}

/// One result: a policy (or one of its rules) and what was found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored: Option<bool>,
    /// The checked objects (`resources` on the wire; `Subjects` in the Go types).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// OpenReports `configuration.limits`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(default)]
    pub max_results: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_filter: Vec<ResultKind>,
}

/// OpenReports `configuration`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportConfiguration {
    pub limits: Limits,
}

// One macro per API (the OpenReports kinds have two more top-level fields).
macro_rules! wg_type {
    ($(#[$doc:meta])* $name:ident, $plural:literal, $scope:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            pub api_version: String,
            pub kind: String,
            pub metadata: ObjectMeta,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scope: Option<ObjectReference>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scope_selector: Option<LabelSelector>,
            #[serde(default)]
            pub summary: Summary,
            #[serde(default)]
            pub results: Vec<ReportResult>,
        }
        report_impls!($name, "wgpolicyk8s.io", "v1alpha2", $plural, $scope);
    };
}

macro_rules! open_type {
    ($(#[$doc:meta])* $name:ident, $plural:literal, $scope:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            pub api_version: String,
            pub kind: String,
            pub metadata: ObjectMeta,
            /// The engine that wrote the report.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub source: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scope: Option<ObjectReference>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scope_selector: Option<LabelSelector>,
            /// Limits the writer applied.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub configuration: Option<ReportConfiguration>,
            #[serde(default)]
            pub summary: Summary,
            #[serde(default)]
            pub results: Vec<ReportResult>,
        }
        report_impls!($name, "openreports.io", "v1alpha1", $plural, $scope);
    };
}

macro_rules! report_impls {
    ($name:ident, $group:literal, $version:literal, $plural:literal, $scope:ty) => {
        impl $name {
            /// An empty report named `name` (in `namespace` for the namespaced kinds).
            pub fn named(name: &str, namespace: Option<&str>) -> Self {
                $name {
                    api_version: concat!($group, "/", $version).to_string(),
                    kind: stringify!($name).to_string(),
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: namespace.map(str::to_string),
                        ..ObjectMeta::default()
                    },
                    ..$name::default()
                }
            }
        }

        impl k8s_openapi::Resource for $name {
            const API_VERSION: &'static str = concat!($group, "/", $version);
            const GROUP: &'static str = $group;
            const KIND: &'static str = stringify!($name);
            const VERSION: &'static str = $version;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }

        impl k8s_openapi::Metadata for $name {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

wg_type!(
    /// `wgpolicyk8s.io/v1alpha2` PolicyReport: the results of one namespace.
    PolicyReport,
    "policyreports",
    k8s_openapi::NamespaceResourceScope
);
wg_type!(
    /// `wgpolicyk8s.io/v1alpha2` ClusterPolicyReport: cluster-scoped results.
    ClusterPolicyReport,
    "clusterpolicyreports",
    k8s_openapi::ClusterResourceScope
);
open_type!(
    /// `openreports.io/v1alpha1` Report: the results of one namespace.
    Report,
    "reports",
    k8s_openapi::NamespaceResourceScope
);
open_type!(
    /// `openreports.io/v1alpha1` ClusterReport: cluster-scoped results.
    ClusterReport,
    "clusterreports",
    k8s_openapi::ClusterResourceScope
);

/// The CRDs of the four kinds, as the published CRDs define them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        ("PolicyReport", "policyreports", "polr", true, false),
        (
            "ClusterPolicyReport",
            "clusterpolicyreports",
            "cpolr",
            false,
            false,
        ),
        ("Report", "reports", "reps", true, true),
        ("ClusterReport", "clusterreports", "creps", false, true),
    ]
    .into_iter()
    .map(|(kind, plural, short, namespaced, open)| crd(kind, plural, short, namespaced, open))
    .collect()
}

/// The CRD file names in `crds/yaml/`, in the order of [`crds`].
pub const CRD_FILES: [&str; 4] = [
    "wgpolicyk8s.io_policyreports.yaml",
    "wgpolicyk8s.io_clusterpolicyreports.yaml",
    "openreports.io_reports.yaml",
    "openreports.io_clusterreports.yaml",
];

fn crd(
    kind: &str,
    plural: &str,
    short: &str,
    namespaced: bool,
    openreports: bool,
) -> CustomResourceDefinition {
    let (group, version) = if openreports {
        (OPENREPORTS_GROUP, OPENREPORTS_VERSION)
    } else {
        (WGPOLICY_GROUP, WGPOLICY_VERSION)
    };
    let mut properties = json!({
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "scope": object_reference("Scope is an optional reference to the report scope (e.g. a Deployment, Namespace, or Node)"),
        "scopeSelector": label_selector("ScopeSelector is an optional selector for multiple scopes (e.g. Pods). Either one of, or none of, but not both of, Scope or ScopeSelector should be specified."),
        "summary": summary_schema(),
        "results": {
            "description": "Results provides result details",
            "type": "array",
            "items": result_schema(openreports),
        },
    });
    if openreports {
        properties["source"] = json!({
            "description": "Source is an identifier for the source e.g. a policy engine that manages this report.",
            "type": "string",
        });
        properties["configuration"] = json!({
            "description": "Configuration is an optional field which can be used to specify a contract between Report generators and consumers",
            "type": "object",
            "required": ["limits"],
            "properties": {"limits": {"type": "object", "properties": {
                "maxResults": {"description": "MaxResults is the maximum number of results contained in the report", "type": "integer"},
                "statusFilter": {"description": "StatusFilter indicates that the Report contains only those reports with statuses specified in this list", "type": "array", "items": {"type": "string", "enum": ["pass", "fail", "warn", "error", "skip"]}},
            }}},
        });
    }
    let column =
        |name: &str, path: &str, ty: &str| json!({"name": name, "type": ty, "jsonPath": path});
    let mut kind_col = column("Kind", ".scope.kind", "string");
    kind_col["priority"] = json!(1);
    let mut name_col = column("Name", ".scope.name", "string");
    name_col["priority"] = json!(1);
    let value = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_lowercase(),
                "shortNames": [short],
            },
            "scope": if namespaced { "Namespaced" } else { "Cluster" },
            "versions": [{
                "name": version,
                "served": true,
                "storage": true,
                "additionalPrinterColumns": [
                    kind_col,
                    name_col,
                    column("Pass", ".summary.pass", "integer"),
                    column("Fail", ".summary.fail", "integer"),
                    column("Warn", ".summary.warn", "integer"),
                    column("Error", ".summary.error", "integer"),
                    column("Skip", ".summary.skip", "integer"),
                    column("Age", ".metadata.creationTimestamp", "date"),
                ],
                "schema": {"openAPIV3Schema": {
                    "description": format!("{kind} is the Schema for the {plural} API"),
                    "type": "object",
                    "properties": properties,
                }},
                "subresources": {},
            }],
        },
    });
    // The value above is built from literals of the right shape: a failure here is a bug in
    // this function, caught by the CRD YAML test.
    serde_json::from_value(value).unwrap_or_else(|e| panic!("report CRD {kind}: {e}"))
}

fn summary_schema() -> Value {
    let count = |what: &str| json!({"description": what, "type": "integer"});
    json!({
        "description": "Summary provides a summary of results",
        "type": "object",
        "properties": {
            "pass": count("Pass provides the count of policies whose requirements were met"),
            "fail": count("Fail provides the count of policies whose requirements were not met"),
            "warn": count("Warn provides the count of non-scored policies whose requirements were not met"),
            "error": count("Error provides the count of policies that could not be evaluated"),
            "skip": count("Skip indicates the count of policies that were not selected for evaluation"),
        },
    })
}

fn result_schema(openreports: bool) -> Value {
    let text = |what: &str| json!({"description": what, "type": "string"});
    let source = if openreports {
        "Source is an identifier for the policy engine that manages this report. If the Source is specified at this level, it will override the Source field set at the Report level"
    } else {
        "Source is an identifier for the policy engine that manages this report"
    };
    json!({
        "description": "ReportResult provides the result for an individual policy",
        "type": "object",
        "required": ["policy"],
        "properties": {
            "source": text(source),
            "policy": text("Policy is the name or identifier of the policy"),
            "rule": text("Rule is the name or identifier of the rule within the policy"),
            "category": text("Category indicates policy category"),
            "severity": {
                "description": "Severity indicates policy check result criticality",
                "type": "string",
                "enum": ["critical", "high", "low", "medium", "info"],
            },
            "timestamp": {
                "description": "Timestamp indicates the time the result was found",
                "type": "object",
                "required": ["nanos", "seconds"],
                "properties": {
                    "nanos": {"type": "integer", "format": "int32"},
                    "seconds": {"type": "integer", "format": "int64"},
                },
            },
            "result": {
                "description": "Result indicates the outcome of the policy rule execution",
                "type": "string",
                "enum": ["pass", "fail", "warn", "error", "skip"],
            },
            "scored": {"description": "Scored indicates if this result is scored", "type": "boolean"},
            "resources": {
                "description": "Subjects is an optional reference to the checked Kubernetes resources",
                "type": "array",
                "items": object_reference("ObjectReference contains enough information to let you inspect or modify the referred object."),
            },
            "resourceSelector": label_selector("ResourceSelector is an optional label selector for checked Kubernetes resources. Either a Subject or a ResourceSelector can be specified. If neither are provided, the result is assumed to be for the policy report scope."),
            "message": text("Description is a short user friendly message for the policy rule"),
            "properties": {
                "description": "Properties provides additional information for the policy rule",
                "type": "object",
                "additionalProperties": {"type": "string"},
            },
        },
    })
}

fn object_reference(description: &str) -> Value {
    let text = |what: &str| json!({"description": what, "type": "string"});
    json!({
        "description": description,
        "type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "apiVersion": text("API version of the referent."),
            "fieldPath": text("If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement."),
            "kind": text("Kind of the referent."),
            "name": text("Name of the referent."),
            "namespace": text("Namespace of the referent."),
            "resourceVersion": text("Specific resourceVersion to which this reference is made, if any."),
            "uid": text("UID of the referent."),
        },
    })
}

fn label_selector(description: &str) -> Value {
    json!({
        "description": description,
        "type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchExpressions": {
                "type": "array",
                "x-kubernetes-list-type": "atomic",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string"},
                        "values": {"type": "array", "x-kubernetes-list-type": "atomic", "items": {"type": "string"}},
                    },
                },
            },
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_each_outcome() {
        let r = |kind| ReportResult {
            policy: "p".into(),
            result: Some(kind),
            ..ReportResult::default()
        };
        let results = [
            r(ResultKind::Pass),
            r(ResultKind::Pass),
            r(ResultKind::Fail),
            r(ResultKind::Warn),
            r(ResultKind::Skip),
        ];
        assert_eq!(
            Summary::of(&results),
            Summary {
                pass: 2,
                fail: 1,
                warn: 1,
                error: 0,
                skip: 1
            }
        );
    }

    #[test]
    fn reports_serialise_with_top_level_fields() {
        let mut report = PolicyReport::named("palisade", Some("default"));
        report.results.push(ReportResult {
            policy: "NetworkPolicy default/web".into(),
            result: Some(ResultKind::Fail),
            timestamp: Some(Timestamp {
                seconds: 5,
                nanos: 0,
            }),
            ..ReportResult::default()
        });
        report.summary = Summary::of(&report.results);
        let value = serde_json::to_value(&report).expect("json");
        assert_eq!(value["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        assert_eq!(value["kind"], "PolicyReport");
        assert_eq!(value["summary"]["fail"], 1);
        assert_eq!(value["results"][0]["result"], "fail");
        assert_eq!(value["results"][0]["timestamp"]["seconds"], 5);
        let open = Report::named("palisade", Some("default"));
        assert_eq!(
            serde_json::to_value(&open).expect("json")["apiVersion"],
            "openreports.io/v1alpha1"
        );
    }

    /// Checks `value` against an OpenAPI v3 schema as the API server would for the parts
    /// these CRDs use (type, properties without unknown fields, required, enum,
    /// additionalProperties, items): a field the types write that the schema does not have
    /// would be pruned, a wrong type refused.
    fn conforms(value: &Value, schema: &Value, path: &str) -> Result<(), String> {
        let ty = schema["type"].as_str().unwrap_or("");
        let ok = match ty {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !ok {
            return Err(format!("{path}: {value} is not {ty}"));
        }
        if let Some(allowed) = schema["enum"].as_array() {
            if !allowed.contains(value) {
                return Err(format!("{path}: {value} not in {allowed:?}"));
            }
        }
        if let (Some(obj), "object") = (value.as_object(), ty) {
            for required in schema["required"].as_array().into_iter().flatten() {
                let key = required.as_str().unwrap_or_default();
                if !obj.contains_key(key) {
                    return Err(format!("{path}: {key} is required"));
                }
            }
            for (key, v) in obj {
                let sub = match (
                    schema["properties"].get(key),
                    schema.get("additionalProperties"),
                ) {
                    (Some(sub), _) => sub,
                    (None, Some(extra)) => extra,
                    // `metadata: {type: object}` takes anything.
                    (None, None) if schema.get("properties").is_none() => continue,
                    (None, None) => return Err(format!("{path}.{key}: not in the schema")),
                };
                conforms(v, sub, &format!("{path}.{key}"))?;
            }
        }
        if let Some(items) = value.as_array() {
            for (i, v) in items.iter().enumerate() {
                conforms(v, &schema["items"], &format!("{path}[{i}]"))?;
            }
        }
        Ok(())
    }

    fn value<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).expect("json")
    }

    fn full_result() -> ReportResult {
        ReportResult {
            source: Some("palisade".into()),
            policy: "NetworkPolicy/web".into(),
            rule: Some("ingress[0]".into()),
            category: Some("lint".into()),
            severity: Some(Severity::Medium),
            timestamp: Some(Timestamp {
                seconds: 1,
                nanos: 2,
            }),
            result: Some(ResultKind::Warn),
            scored: Some(true),
            resources: vec![ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some("prod".into()),
                name: Some("web".into()),
                ..ObjectReference::default()
            }],
            resource_selector: Some(LabelSelector {
                match_labels: Some([("app".to_string(), "web".to_string())].into()),
                ..LabelSelector::default()
            }),
            message: Some("m".into()),
            properties: [("k".to_string(), "v".to_string())].into(),
        }
    }

    #[test]
    fn every_field_the_types_write_is_in_the_crd_schemas() {
        let schema = |i: usize| {
            serde_json::to_value(&crds()[i].spec.versions[0].schema).expect("json")
                ["openAPIV3Schema"]
                .clone()
        };
        let mut polr = PolicyReport::named("palisade", Some("prod"));
        polr.results.push(full_result());
        polr.summary = Summary::of(&polr.results);
        polr.scope = Some(ObjectReference {
            kind: Some("Namespace".into()),
            name: Some("prod".into()),
            ..ObjectReference::default()
        });
        let mut crep = ClusterReport::named("palisade", None);
        crep.results.push(full_result());
        crep.source = Some("palisade".into());
        crep.configuration = Some(ReportConfiguration {
            limits: Limits {
                max_results: 10,
                status_filter: vec![ResultKind::Fail],
            },
        });
        assert_eq!(conforms(&value(&polr), &schema(0), "PolicyReport"), Ok(()));
        assert_eq!(conforms(&value(&crep), &schema(3), "ClusterReport"), Ok(()));
        // The check itself: an unknown field and a wrong enum are caught.
        let mut bad = value(&polr);
        bad["results"][0]["subjects"] = json!([]);
        assert!(conforms(&bad, &schema(0), "bad").is_err());
        let mut bad = value(&polr);
        bad["results"][0]["result"] = json!("pending");
        assert!(conforms(&bad, &schema(0), "bad").is_err());
        // The wgpolicyk8s kinds have no report-level source.
        let mut bad = value(&polr);
        bad["source"] = json!("palisade");
        assert!(conforms(&bad, &schema(0), "bad").is_err());
    }

    #[test]
    fn crds_have_the_upstream_names_and_columns() {
        let crds = crds();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "policyreports.wgpolicyk8s.io",
                "clusterpolicyreports.wgpolicyk8s.io",
                "reports.openreports.io",
                "clusterreports.openreports.io"
            ]
        );
        for crd in &crds {
            let columns: Vec<_> = crd.spec.versions[0]
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.clone())
                .collect();
            assert_eq!(
                columns,
                ["Kind", "Name", "Pass", "Fail", "Warn", "Error", "Skip", "Age"]
            );
        }
    }
}
