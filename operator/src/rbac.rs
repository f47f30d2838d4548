//! Every Kubernetes API call the operator makes, in one table: the Helm chart's RBAC is
//! generated from it and checked against it.
//!
//! The table is kept honest from both sides:
//! - the code side: every request a mocked-API test sends through
//!   `crate::verifier` (test-only) must be granted by a row ([`granted`], called by the verifier for
//!   each request; an `OwnNamespace` row only in the release namespace, where the chart's
//!   Role is: [`release_namespace`]; a test may name the chart features on, [`features`],
//!   so that a row of another feature does not count), and a scan of
//!   `operator/src/**/*.rs` checks that every resource type the code builds an `Api` for
//!   has a row;
//! - the chart side: `charts/palisade/files/operator-rbac.json` is this table as JSON
//!   (a test here fails when it differs; `PALISADE_BLESS=1` rewrites it), the chart's
//!   operator ClusterRole and Role are rendered from that file, and `charts/tests`
//!   renders the chart with the real Helm engine and asserts its rules equal the file.
//!
//! Adding an API call: add a row here, run `PALISADE_BLESS=1 cargo test -p
//! palisade-operator rbac`, commit the JSON file with it.
//!
//! API discovery (`GET /apis/GROUP/VERSION`) is not a resource: every authenticated user
//! may do it through the default `system:discovery` ClusterRole, so no row is needed.

use serde::Serialize;

/// Where a permission is granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scope {
    /// Every namespace, or a cluster-scoped resource: the operator's ClusterRole.
    Cluster,
    /// Only the operator's own namespace (the release's): its Role.
    OwnNamespace,
}

/// One row: the verbs the operator uses on a resource.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    /// API group (`""` is the core group).
    pub api_group: &'static str,
    /// Resource plural, with `/subresource` when the call targets one.
    pub resource: &'static str,
    /// RBAC verbs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// Granted only when this chart feature is on (`null`: always). The chart maps each
    /// name to its values (see `charts/palisade/templates/_helpers.tpl`, `palisade.feature`):
    /// `generatedTls` (the operator writes the stream's certificate Secret), `auditApi` (the
    /// audit query API is served), `wgpolicyk8s` / `openreports` / `reports` (the report
    /// APIs written), `operatorReportCrds` (the operator creates the report CRDs: never with
    /// the chart, which installs them itself and passes `--no-report-crds`).
    pub feature: Option<&'static str>,
    /// The code that makes the call.
    pub why: &'static str,
}

const fn row(
    api_group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    scope: Scope,
    why: &'static str,
) -> Permission {
    Permission {
        api_group,
        resource,
        verbs,
        scope,
        feature: None,
        why,
    }
}

const WATCH: &[&str] = &["list", "watch"];

/// The operator's API calls.
pub const OPERATOR: &[Permission] = &[
    row(
        "",
        "namespaces",
        WATCH,
        Scope::Cluster,
        "source::kube watcher",
    ),
    row("", "nodes", WATCH, Scope::Cluster, "source::kube watcher"),
    row(
        "",
        "pods",
        &["get", "list", "watch"],
        Scope::Cluster,
        "source::kube watcher; stream::auth reads the pod a token is bound to",
    ),
    row(
        "networking.k8s.io",
        "networkpolicies",
        WATCH,
        Scope::Cluster,
        "source::kube watcher",
    ),
    row(
        "policy.networking.k8s.io",
        "clusternetworkpolicies",
        WATCH,
        Scope::Cluster,
        "source::kube watcher (when the CRD is installed)",
    ),
    row(
        "policy.networking.k8s.io",
        "adminnetworkpolicies",
        WATCH,
        Scope::Cluster,
        "source::kube watcher (when the CRD is installed)",
    ),
    row(
        "policy.networking.k8s.io",
        "baselineadminnetworkpolicies",
        WATCH,
        Scope::Cluster,
        "source::kube watcher (when the CRD is installed)",
    ),
    row(
        "palisade.dev",
        "tiers",
        WATCH,
        Scope::Cluster,
        "source::kube watcher",
    ),
    row(
        "palisade.dev",
        "tierednetworkpolicies",
        WATCH,
        Scope::Cluster,
        "source::kube watcher; tnp_status watcher",
    ),
    row(
        "palisade.dev",
        "tierednetworkpolicies/status",
        &["patch"],
        Scope::Cluster,
        "tnp_status writes the rule counts",
    ),
    row(
        "authentication.k8s.io",
        "tokenreviews",
        &["create"],
        Scope::Cluster,
        "stream::auth checks the enforcers' tokens",
    ),
    Permission {
        feature: Some("auditApi"),
        ..row(
            "authorization.k8s.io",
            "subjectaccessreviews",
            &["create"],
            Scope::Cluster,
            "audit::access checks the query API's callers' permission (audit.palisade.io decisions)",
        )
    },
    row(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
        Scope::OwnNamespace,
        "leader election",
    ),
    Permission {
        // The chart installs the report CRDs itself and runs the operator with
        // --no-report-crds, so it never grants this row.
        feature: Some("operatorReportCrds"),
        ..row(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            &["get", "create"],
            Scope::Cluster,
            "report::kube installs the report CRDs when absent (never updates one)",
        )
    },
    // Reports: each API's own rows write it; the `reports` rows list and delete in both,
    // so that the reports an earlier --report-api left in the other API are deleted.
    Permission {
        feature: Some("reports"),
        ..row(
            "wgpolicyk8s.io",
            "policyreports",
            &["list", "delete"],
            Scope::Cluster,
            "report::kube finds and deletes Palisade's stale PolicyReports (any --report-api)",
        )
    },
    Permission {
        feature: Some("reports"),
        ..row(
            "wgpolicyk8s.io",
            "clusterpolicyreports",
            &["list", "delete"],
            Scope::Cluster,
            "report::kube finds and deletes Palisade's stale ClusterPolicyReport (any --report-api)",
        )
    },
    Permission {
        feature: Some("reports"),
        ..row(
            "openreports.io",
            "reports",
            &["list", "delete"],
            Scope::Cluster,
            "report::kube finds and deletes Palisade's stale Reports (any --report-api)",
        )
    },
    Permission {
        feature: Some("reports"),
        ..row(
            "openreports.io",
            "clusterreports",
            &["list", "delete"],
            Scope::Cluster,
            "report::kube finds and deletes Palisade's stale ClusterReport (any --report-api)",
        )
    },
    Permission {
        feature: Some("wgpolicyk8s"),
        ..row(
            "wgpolicyk8s.io",
            "policyreports",
            &["create", "patch"],
            Scope::Cluster,
            "report::kube writes one PolicyReport per namespace (server-side apply)",
        )
    },
    Permission {
        feature: Some("wgpolicyk8s"),
        ..row(
            "wgpolicyk8s.io",
            "clusterpolicyreports",
            &["create", "patch"],
            Scope::Cluster,
            "report::kube writes the ClusterPolicyReport (server-side apply)",
        )
    },
    Permission {
        feature: Some("openreports"),
        ..row(
            "openreports.io",
            "reports",
            &["create", "patch"],
            Scope::Cluster,
            "report::kube writes one Report per namespace (--report-api openreports|both)",
        )
    },
    Permission {
        feature: Some("openreports"),
        ..row(
            "openreports.io",
            "clusterreports",
            &["create", "patch"],
            Scope::Cluster,
            "report::kube writes the ClusterReport (--report-api openreports|both)",
        )
    },
    Permission {
        feature: Some("generatedTls"),
        ..row(
            "",
            "secrets",
            &["get", "create", "update"],
            Scope::OwnNamespace,
            "certs keeps the stream's certificate in a Secret",
        )
    },
];

/// The API calls of `palisade-uninstall` (the chart's pre-delete hook, [`crate::uninstall`]).
pub const UNINSTALL: &[Permission] = &[
    row(
        "apps",
        "daemonsets",
        &["get", "delete"],
        Scope::OwnNamespace,
        "uninstall reads the enforcer's pod template, then deletes the DaemonSet",
    ),
    row(
        "",
        "pods",
        &["list", "create", "delete"],
        Scope::OwnNamespace,
        "uninstall waits for the enforcers to go, runs and removes the cleanup pods",
    ),
    row(
        "",
        "nodes",
        &["list"],
        Scope::Cluster,
        "uninstall cleans every node",
    ),
    row(
        "",
        "configmaps",
        &["get", "create", "update", "delete"],
        Scope::OwnNamespace,
        "uninstall keeps its plan (pod template, nodes left) until every node is clean",
    ),
    Permission {
        feature: Some("generatedTls"),
        ..row(
            "",
            "secrets",
            &["delete"],
            Scope::OwnNamespace,
            "uninstall deletes the certificate Secret the operator made",
        )
    },
    row(
        "coordination.k8s.io",
        "leases",
        &["delete"],
        Scope::OwnNamespace,
        "uninstall deletes the leader Lease",
    ),
];

/// The release namespace the mocked-API tests install into, unless one says otherwise
/// ([`release_namespace`]): the chart's Role exists there only.
pub const TEST_RELEASE_NAMESPACE: &str = "palisade-system";

thread_local! {
    /// The table [`granted`] checks on this thread (tests of `palisade-uninstall` switch it).
    static CHECKED: std::cell::Cell<&'static [Permission]> = const { std::cell::Cell::new(OPERATOR) };
    /// The namespace an `OwnNamespace` row is granted in on this thread.
    static RELEASE: std::cell::RefCell<String> =
        std::cell::RefCell::new(TEST_RELEASE_NAMESPACE.to_string());
    /// The chart features on for this thread's requests (`None`: every row counts).
    static FEATURES: std::cell::Cell<Option<&'static [&'static str]>> =
        const { std::cell::Cell::new(None) };
}

/// Makes [`granted`] grant only the rows without a feature or with one of `features`, on
/// this thread: what the chart grants with those features on (e.g. a writer of one
/// report API must not write the other).
pub fn features(features: &'static [&'static str]) {
    FEATURES.with(|f| f.set(Some(features)));
}

/// Makes [`granted`] check `table` on this thread (the mocked-API tests of another
/// component than the operator).
pub fn check_against(table: &'static [Permission]) {
    CHECKED.with(|c| c.set(table));
}

/// Makes [`granted`] grant `OwnNamespace` rows in `namespace` only, on this thread (the
/// chart's Role is created in the release namespace and nowhere else).
pub fn release_namespace(namespace: &str) {
    RELEASE.with(|r| *r.borrow_mut() = namespace.to_string());
}

/// The RBAC verb of a request (`None` for discovery and other non-resource paths).
fn verb(method: &str, named: bool, query: &str) -> Option<&'static str> {
    let watching = query
        .split('&')
        .any(|pair| pair == "watch=true" || pair == "watch=1");
    Some(match (method, named) {
        ("GET", true) => "get",
        ("GET", false) if watching => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    })
}

/// What a request path asks for.
struct Target {
    group: String,
    /// Resource plural, with `/subresource` when the path names one.
    resource: String,
    named: bool,
    /// The namespace of a namespaced request (`None`: cluster-wide or cluster-scoped).
    namespace: Option<String>,
}

/// What a request path asks for; `None` for discovery (`/api`, `/apis/GROUP/VERSION`) and
/// other non-resource paths.
fn target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (resource, named) = match rest {
        [] => return None,
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    Some(Target {
        group: group.to_string(),
        resource,
        named,
        namespace,
    })
}

/// Whether a row's scope covers a request in `namespace` (`None`: cluster-wide): a Role
/// binds only in the release namespace, a ClusterRole everywhere.
fn in_scope(scope: Scope, namespace: Option<&str>, release: &str) -> bool {
    match scope {
        Scope::Cluster => true,
        Scope::OwnNamespace => namespace == Some(release),
    }
}

/// Whether the table grants a request (`method`, path and query as sent to the API
/// server). `Err` says what is missing, for the test that made the request.
pub fn granted(method: &str, path_and_query: &str) -> Result<(), String> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let Some(Target {
        group,
        resource,
        named,
        namespace,
    }) = target(path)
    else {
        return Ok(());
    };
    let Some(verb) = verb(method, named, query) else {
        return Err(format!(
            "{method} {path_and_query}: no RBAC verb for this request"
        ));
    };
    let table = CHECKED.with(|c| c.get());
    let release = RELEASE.with(|r| r.borrow().clone());
    let features = FEATURES.with(|f| f.get());
    let found = table.iter().any(|p| {
        let on = match (p.feature, features) {
            (Some(f), Some(on)) => on.contains(&f),
            _ => true,
        };
        on && p.api_group == group
            && p.resource == resource
            && p.verbs.contains(&verb)
            && in_scope(p.scope, namespace.as_deref(), &release)
    });
    if found {
        Ok(())
    } else {
        let scope = match &namespace {
            Some(ns) => format!("in namespace {ns}; the release namespace is {release}"),
            None => "cluster-wide".to_string(),
        };
        Err(format!(
            "{method} {path_and_query} needs `{verb}` on {resource} (group {group:?}, \
             {scope}), which operator/src/rbac.rs does not grant: add a row there"
        ))
    }
}

/// The table as the chart reads it (`charts/palisade/files/operator-rbac.json`).
pub fn chart_json() -> String {
    let rows = |table: &[Permission]| -> Vec<serde_json::Value> {
        table
            .iter()
            .map(|p| {
                serde_json::json!({
                    "apiGroup": p.api_group,
                    "resource": p.resource,
                    "verbs": p.verbs,
                    "scope": p.scope,
                    "feature": p.feature,
                })
            })
            .collect()
    };
    let mut text = serde_json::to_string_pretty(&serde_json::json!({
        "_comment": "Generated from operator/src/rbac.rs (PALISADE_BLESS=1 cargo test -p palisade-operator rbac); do not edit.",
        "operator": rows(OPERATOR),
        "uninstall": rows(UNINSTALL),
    }))
    .unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn the_chart_file_is_the_table() {
        let path = repo().join("charts/palisade/files/operator-rbac.json");
        let wanted = chart_json();
        if std::env::var_os("PALISADE_BLESS").is_some() {
            std::fs::write(&path, &wanted).expect("write operator-rbac.json");
        }
        let found = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            found == wanted,
            "{} differs from operator/src/rbac.rs; run PALISADE_BLESS=1 cargo test -p \
             palisade-operator rbac and commit it",
            path.display()
        );
    }

    #[test]
    fn rows_are_unique_and_use_rbac_verbs() {
        let known = [
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
        ];
        for table in [OPERATOR, UNINSTALL] {
            let mut seen = std::collections::BTreeSet::new();
            for p in table {
                assert!(
                    seen.insert((
                        p.api_group,
                        p.resource,
                        p.scope == Scope::Cluster,
                        p.feature
                    )),
                    "{} listed twice",
                    p.resource
                );
                for v in p.verbs {
                    assert!(known.contains(v), "{}: unknown verb {v}", p.resource);
                }
            }
        }
    }

    #[test]
    fn requests_map_to_verbs_and_resources() {
        assert!(granted("GET", "/api/v1/pods?&limit=500").is_ok());
        assert!(granted("GET", "/api/v1/pods?&watch=true&timeoutSeconds=290").is_ok());
        assert!(granted("GET", "/api/v1/namespaces/web/pods/a").is_ok());
        assert!(granted("DELETE", "/api/v1/namespaces/web/pods/a").is_err());
        assert!(granted("GET", "/api/v1/namespaces?").is_ok());
        assert!(
            granted("GET", "/api/v1/namespaces/web").is_err(),
            "get namespace"
        );
        assert!(granted("POST", "/apis/authentication.k8s.io/v1/tokenreviews?").is_ok());
        assert!(granted(
            "PATCH",
            "/apis/palisade.dev/v1alpha1/tierednetworkpolicies/guard/status?"
        )
        .is_ok());
        assert!(granted(
            "PATCH",
            "/apis/palisade.dev/v1alpha1/tierednetworkpolicies/guard?"
        )
        .is_err());
        release_namespace("p");
        let lease = "/apis/coordination.k8s.io/v1/namespaces/p/leases/palisade-operator";
        assert!(granted("GET", lease).is_ok());
        assert!(granted("PUT", lease).is_ok());
        assert!(granted("DELETE", lease).is_err());
        // The Role exists only in the release namespace: a Lease anywhere else is refused.
        let foreign = "/apis/coordination.k8s.io/v1/namespaces/other/leases/palisade-operator";
        let refused = granted("GET", foreign).expect_err("a foreign namespace");
        assert!(refused.contains("in namespace other"), "{refused}");
        // Cluster rows still cover every namespace.
        assert!(granted("GET", "/api/v1/namespaces/other/pods/a").is_ok());
        release_namespace(TEST_RELEASE_NAMESPACE);
        assert!(granted("GET", lease).is_err(), "p is no longer the release");
        // A Lease outside a namespace would need a ClusterRole: not granted.
        assert!(granted("GET", "/apis/coordination.k8s.io/v1/leases?").is_err());
        // Discovery needs no row.
        assert!(granted("GET", "/apis/palisade.dev/v1alpha1").is_ok());
    }

    /// (group, plural) of every resource type the operator's code may build an `Api` for.
    /// A type missing here fails the scan below: add it here and a row to the table.
    fn resource_of(type_name: &str) -> Option<(String, String)> {
        use k8s_openapi::api::{
            authentication::v1::TokenReview, coordination::v1::Lease, core::v1::*,
            networking::v1::NetworkPolicy,
        };
        use kube::Resource;
        use palisade_crds::palisade::{Tier, TieredNetworkPolicy};
        use palisade_crds::upstream::{v1alpha1, v1alpha2};
        fn of<K: Resource<DynamicType = ()>>() -> Option<(String, String)> {
            Some((K::group(&()).to_string(), K::plural(&()).to_string()))
        }
        match type_name {
            "Namespace" => of::<Namespace>(),
            "Node" => of::<Node>(),
            "ConfigMap" => of::<ConfigMap>(),
            "Pod" => of::<Pod>(),
            "Secret" => of::<Secret>(),
            "NetworkPolicy" => of::<NetworkPolicy>(),
            "ClusterNetworkPolicy" => of::<v1alpha2::ClusterNetworkPolicy>(),
            "AdminNetworkPolicy" => of::<v1alpha1::AdminNetworkPolicy>(),
            "BaselineAdminNetworkPolicy" => of::<v1alpha1::BaselineAdminNetworkPolicy>(),
            "Tier" => of::<Tier>(),
            "TieredNetworkPolicy" => of::<TieredNetworkPolicy>(),
            "TokenReview" => of::<TokenReview>(),
            "SubjectAccessReview" => {
                of::<k8s_openapi::api::authorization::v1::SubjectAccessReview>()
            }
            "Lease" => of::<Lease>(),
            "DaemonSet" => of::<k8s_openapi::api::apps::v1::DaemonSet>(),
            "CustomResourceDefinition" => of::<
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
            >(),
            _ => None,
        }
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read operator/src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The type names in `Api::<T>`, `Api<T>` and `ApiResource::erase::<T>` of a source text.
    fn api_types(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for marker in ["Api::<", "Api<", "ApiResource::erase::<"] {
            for (i, _) in text.match_indices(marker) {
                let preceded = text[..i]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_alphanumeric());
                if preceded && marker != "ApiResource::erase::<" {
                    continue; // `DynamicApi<`, `ApiResource::erase::<` counted once
                }
                let rest = &text[i + marker.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let last = name.rsplit("::").next().unwrap_or("").to_string();
                // Generic parameters (`Api<K>`) are instantiated elsewhere: the mocked-API
                // check in `granted` sees their requests.
                let generic = last.len() <= 2 && last.chars().all(|c| c.is_ascii_uppercase());
                if !last.is_empty() && !generic && last != "DynamicObject" {
                    out.push(last);
                }
            }
        }
        out
    }

    #[test]
    fn every_api_type_in_the_code_has_a_row() {
        let mut files = Vec::new();
        rust_files(&repo().join("operator/src"), &mut files);
        assert!(files.len() > 5, "found the operator's sources");
        let mut found = 0;
        for file in files {
            if file.ends_with("rbac.rs") {
                continue; // this file's examples and docs
            }
            let text = std::fs::read_to_string(&file).expect("read source");
            let table = if file.ends_with("uninstall.rs") {
                UNINSTALL
            } else {
                OPERATOR
            };
            for ty in api_types(&text) {
                found += 1;
                let Some((group, plural)) = resource_of(&ty) else {
                    panic!(
                        "{}: Api of `{ty}`: unknown type; add it to rbac.rs resource_of and \
                         its calls to the table",
                        file.display()
                    );
                };
                assert!(
                    table
                        .iter()
                        .any(|p| p.api_group == group && p.resource == plural),
                    "{}: Api of `{ty}` ({group}/{plural}) has no row in operator/src/rbac.rs",
                    file.display()
                );
            }
        }
        assert!(found >= 10, "the scan sees the Api constructions ({found})");
    }

    #[test]
    fn the_scan_finds_api_types() {
        let text = "let api: Api<Pod> = Api::namespaced(c, ns); Api::<Node>::all(c); \
                    ApiResource::erase::<Tier>(&()); Api::<DynamicObject>::all_with(c, &r); \
                    fn f<K>(api: Api<K>) {}";
        assert_eq!(api_types(text), vec!["Node", "Pod", "Tier"]);
    }
}
