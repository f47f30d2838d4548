//! Objects of every kind the operator reads, one at a time: [`ClusterObject`] (converted),
//! [`ObjectKey`] (what identifies it, even when it cannot be converted) and
//! [`parse_objects`], which reads a manifest file of any mix of kinds document by document,
//! so that one bad document never hides the others.

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Node as K8sNode, Pod as K8sPod};
use palisade_policy::model::{Namespace, Node, Pod, Policy, PolicyId, PolicyKind, Tier};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::manifest::first_unknown_field;
use super::{core, parse_manifests};
use crate::CrdError;

/// Identifies an object of a kind the operator reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    Namespace(String),
    Node(String),
    Pod { namespace: String, name: String },
    Policy(PolicyId),
    Tier(String),
}

impl ObjectKey {
    /// The object's kind, e.g. `Pod` or `AdminNetworkPolicy`.
    pub fn kind(&self) -> &'static str {
        match self {
            ObjectKey::Namespace(_) => "Namespace",
            ObjectKey::Node(_) => "Node",
            ObjectKey::Pod { .. } => "Pod",
            ObjectKey::Policy(id) => id.kind.as_str(),
            ObjectKey::Tier(_) => "Tier",
        }
    }

    /// The key of the object a manifest document describes, read from its `apiVersion`,
    /// `kind` and `metadata` alone (so it is known even when the document cannot be
    /// converted). `None` for kinds the operator does not read and for unnamed objects.
    pub fn of_document(doc: &serde_json::Value) -> Option<ObjectKey> {
        let text = |v: Option<&serde_json::Value>| {
            v.and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let api_version = text(doc.get("apiVersion"))?;
        let kind = text(doc.get("kind"))?;
        let meta = doc.get("metadata");
        let name = text(meta.and_then(|m| m.get("name")))?;
        let namespace = text(meta.and_then(|m| m.get("namespace")));
        let policy = |kind: PolicyKind, namespace: Option<String>| {
            Some(ObjectKey::Policy(PolicyId {
                kind,
                namespace,
                name: name.clone(),
            }))
        };
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => Some(ObjectKey::Namespace(name)),
            ("v1", "Node") => Some(ObjectKey::Node(name)),
            ("v1", "Pod") => Some(ObjectKey::Pod {
                namespace: namespace?,
                name,
            }),
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                policy(PolicyKind::NetworkPolicy, Some(namespace?))
            }
            ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => {
                policy(PolicyKind::ClusterNetworkPolicy, None)
            }
            ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy") => {
                policy(PolicyKind::AdminNetworkPolicy, None)
            }
            ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy") => {
                policy(PolicyKind::BaselineAdminNetworkPolicy, None)
            }
            ("palisade.dev/v1alpha1", "TieredNetworkPolicy") => {
                policy(PolicyKind::TieredNetworkPolicy, None)
            }
            ("palisade.dev/v1alpha1", "Tier") => Some(ObjectKey::Tier(name)),
            _ => None,
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKey::Namespace(name) => write!(f, "Namespace {name}"),
            ObjectKey::Node(name) => write!(f, "Node {name}"),
            ObjectKey::Pod { namespace, name } => write!(f, "Pod {namespace}/{name}"),
            ObjectKey::Policy(id) => id.fmt(f),
            ObjectKey::Tier(name) => write!(f, "Tier {name}"),
        }
    }
}

/// An object converted into the engine's model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterObject {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Policy(Policy),
    Tier(Tier),
}

impl ClusterObject {
    pub fn key(&self) -> ObjectKey {
        match self {
            ClusterObject::Namespace(ns) => ObjectKey::Namespace(ns.name.clone()),
            ClusterObject::Node(n) => ObjectKey::Node(n.name.clone()),
            ClusterObject::Pod(p) => ObjectKey::Pod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            },
            ClusterObject::Policy(p) => ObjectKey::Policy(p.id.clone()),
            ClusterObject::Tier(t) => ObjectKey::Tier(t.name.clone()),
        }
    }
}

/// One non-empty document of a manifest file, read on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectDocument {
    /// The document's number in the file, from 1.
    pub document: usize,
    /// The line (from 1) the document starts at.
    pub line: usize,
    /// The object it describes, when its kind and name can be read (even if it is invalid).
    pub key: Option<ObjectKey>,
    /// The converted object; `Ok(None)` for a pod that has finished (`Succeeded` / `Failed`).
    /// Errors are [`CrdError::Document`] with this document's number and a line in the file.
    pub result: Result<Option<ClusterObject>, CrdError>,
}

/// Reads a manifest file holding any mix of Namespaces, Nodes and Pods (`v1`) and the policy
/// kinds of [`parse_manifests`], document by document: each document is parsed and converted
/// on its own, so a YAML error or an invalid object in one document is reported for that
/// document only. Documents are split at `---` lines. Empty documents are skipped.
///
/// Policy kinds are read exactly as [`parse_manifests`] reads them (strict: an unknown field
/// is an error). Core kinds are strict too (a misspelt `lables` is an error, not a pod without
/// labels); a Pod's `spec.containers` may be left out.
pub fn parse_objects(yaml: &str) -> Vec<ObjectDocument> {
    let mut out = Vec::new();
    let mut number = 0;
    for (start, text) in split_documents(yaml) {
        let Some(result) = read_document(text) else {
            continue;
        };
        number += 1;
        let relocate = |e: CrdError| relocate(e, number, start);
        let (key, result) = match result {
            Err(e) => (None, Err(relocate(e))),
            Ok(value) => {
                let key = ObjectKey::of_document(&value);
                (key, convert(text, value).map_err(relocate))
            }
        };
        out.push(ObjectDocument {
            document: number,
            line: start,
            key,
            result,
        });
    }
    out
}

/// The documents of a file with the line (from 1) each starts at, split at `---` lines.
fn split_documents(yaml: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start_line = 1;
    let mut start_byte = 0;
    let mut offset = 0;
    for (i, line) in yaml.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let separator = bare
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
        if separator {
            out.push((start_line, &yaml[start_byte..offset]));
            start_line = i + 2;
            start_byte = offset + line.len();
        }
        offset += line.len();
    }
    out.push((start_line, &yaml[start_byte..]));
    out
}

/// The document as JSON; `None` when it is empty (only blanks and comments).
fn read_document(text: &str) -> Option<Result<serde_json::Value, CrdError>> {
    let mut documents = serde_yaml::Deserializer::from_str(text);
    let document = documents.next()?;
    let value = match serde_yaml::Value::deserialize(document) {
        Ok(value) => value,
        Err(e) => {
            return Some(Err(CrdError::Document {
                document: 1,
                line: e.location().map(|l| l.line()),
                error: Box::new(CrdError::Syntax {
                    object: "YAML".to_string(),
                    message: strip_location(&e),
                }),
            }))
        }
    };
    if value.is_null() {
        return None;
    }
    Some(serde_json::to_value(&value).map_err(|e| CrdError::Syntax {
        object: "document".to_string(),
        message: e.to_string(),
    }))
}

fn strip_location(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    match (e.location(), text.rsplit_once(" at line ")) {
        (Some(_), Some((message, _))) => message.to_string(),
        _ => text,
    }
}

fn convert(text: &str, value: serde_json::Value) -> Result<Option<ClusterObject>, CrdError> {
    let kind = (
        value.get("apiVersion").and_then(|v| v.as_str()),
        value.get("kind").and_then(|v| v.as_str()),
    );
    match kind {
        (Some("v1"), Some("Pod")) => {
            let mut value = value;
            if let Some(spec) = value.get_mut("spec").and_then(|s| s.as_object_mut()) {
                spec.entry("containers")
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            }
            let pod: K8sPod = typed(&value, "Pod")?;
            Ok(core::pod(&pod)?.map(ClusterObject::Pod))
        }
        (Some("v1"), Some("Namespace")) => {
            let ns: K8sNamespace = typed(&value, "Namespace")?;
            Ok(Some(ClusterObject::Namespace(core::namespace(&ns)?)))
        }
        (Some("v1"), Some("Node")) => {
            let node: K8sNode = typed(&value, "Node")?;
            Ok(Some(ClusterObject::Node(core::node(&node)?)))
        }
        _ => {
            // Every other kind is a policy kind or an error that parse_manifests words.
            let manifests = parse_manifests(text)?;
            let object = manifests
                .policies
                .into_iter()
                .next()
                .map(ClusterObject::Policy)
                .or_else(|| manifests.tiers.into_iter().next().map(ClusterObject::Tier));
            Ok(object)
        }
    }
}

/// Reads a core object strictly: a field that does not survive the round trip through the
/// type is unknown to it.
fn typed<T: DeserializeOwned + Serialize>(
    value: &serde_json::Value,
    kind: &str,
) -> Result<T, CrdError> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("(unnamed)");
    let object = format!("{kind} {name}");
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| CrdError::Syntax {
        object: object.clone(),
        message: e.to_string(),
    })?;
    let back = serde_json::to_value(&typed).map_err(|e| CrdError::Syntax {
        object: object.clone(),
        message: e.to_string(),
    })?;
    if let Some(field) = first_unknown_field(value, &back, "") {
        return Err(CrdError::UnknownField { object, field });
    }
    Ok(typed)
}

/// Puts an error of a document read on its own into its place in the file: document `number`,
/// line counted from the file's start.
fn relocate(error: CrdError, number: usize, start: usize) -> CrdError {
    match error {
        CrdError::Document { line, error, .. } => CrdError::Document {
            document: number,
            line: Some(line.map_or(start, |l| l + start - 1)),
            error,
        },
        other => CrdError::Document {
            document: number,
            line: Some(start),
            error: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &str = "\
# a lab cluster
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.5}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}}
---
---
apiVersion: palisade.dev/v1alpha1
kind: Tier
metadata: {name: gold}
spec: {priority: 50}
";

    #[test]
    fn every_kind_in_one_file() {
        let docs = parse_objects(MIXED);
        let keys: Vec<String> = docs
            .iter()
            .map(|d| d.key.as_ref().map(|k| k.to_string()).unwrap_or_default())
            .collect();
        assert_eq!(
            keys,
            [
                "Namespace prod",
                "Node n1",
                "Pod prod/web",
                "NetworkPolicy prod/deny",
                "Tier gold"
            ]
        );
        assert_eq!(
            docs.iter().map(|d| d.line).collect::<Vec<_>>(),
            [1, 6, 11, 17, 23]
        );
        for d in &docs {
            let object = d.result.as_ref().expect("valid").as_ref().expect("object");
            assert_eq!(Some(object.key()), d.key);
        }
    }

    #[test]
    fn one_bad_document_does_not_hide_the_others() {
        let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, lables: {app: b}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: nope}}]
---
key: [unclosed
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x}
";
        let docs = parse_objects(yaml);
        assert_eq!(docs.len(), 5);
        assert!(matches!(docs[0].result, Ok(Some(ClusterObject::Pod(_)))));
        // Unknown field in a core object, with its path.
        let e = docs[1].result.as_ref().expect_err("lables");
        assert_eq!(e.field(), Some("metadata.lables"), "{e}");
        assert_eq!(e.document(), Some(2));
        assert_eq!(
            docs[1].key.as_ref().map(ToString::to_string).as_deref(),
            Some("Pod x/b")
        );
        // A policy error keeps parse_manifests' line, moved to the file's numbering.
        let e = docs[2].result.as_ref().expect_err("cidr");
        assert_eq!(e.field(), Some("spec.ingress[0].from[0].ipBlock.cidr"));
        assert_eq!(e.line(), Some(16), "{e}");
        assert_eq!(
            docs[2].key.as_ref().map(ToString::to_string).as_deref(),
            Some("NetworkPolicy x/np")
        );
        // A YAML error has no key and a line in the file.
        let e = docs[3].result.as_ref().expect_err("yaml");
        assert_eq!(docs[3].key, None);
        assert_eq!(e.document(), Some(4));
        assert!(e.line().is_some_and(|l| l >= 18), "{e}");
        assert!(matches!(docs[4].result, Ok(Some(ClusterObject::Pod(_)))));
    }

    #[test]
    fn unsupported_kinds_are_errors_without_a_key() {
        let docs = parse_objects("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].key, None);
        assert!(matches!(
            docs[0].result.as_ref().map_err(CrdError::innermost),
            Err(CrdError::UnsupportedKind { .. })
        ));
    }

    #[test]
    fn finished_pod_is_known_but_absent() {
        let docs = parse_objects(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: job, namespace: x}\nstatus: {phase: Succeeded}\n",
        );
        assert_eq!(docs[0].result, Ok(None));
        assert_eq!(
            docs[0].key,
            Some(ObjectKey::Pod {
                namespace: "x".into(),
                name: "job".into()
            })
        );
    }

    #[test]
    fn empty_files_have_no_documents() {
        assert!(parse_objects("").is_empty());
        assert!(parse_objects("# nothing\n---\n---\n").is_empty());
    }
}
