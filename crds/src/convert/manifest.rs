//! Multi-document YAML manifests → [`Manifests`].

use std::collections::BTreeMap;

use palisade_policy::model::{Policy, PolicyId, Tier};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{cluster, netpol, Mode};
use crate::palisade;
use crate::CrdError;

/// The policies and tiers of a manifest, in document order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifests {
    pub policies: Vec<Policy>,
    /// User tiers only; the built-in ones need no object.
    pub tiers: Vec<Tier>,
}

/// The kinds a manifest may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    NetworkPolicy,
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    Tier,
    TieredNetworkPolicy,
}

impl Kind {
    fn of(api_version: &str, kind: &str) -> Option<Kind> {
        Some(match (api_version, kind) {
            ("networking.k8s.io/v1", "NetworkPolicy") => Kind::NetworkPolicy,
            ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => {
                Kind::ClusterNetworkPolicy
            }
            ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy") => Kind::AdminNetworkPolicy,
            ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy") => {
                Kind::BaselineAdminNetworkPolicy
            }
            ("palisade.dev/v1alpha1", "Tier") => Kind::Tier,
            ("palisade.dev/v1alpha1", "TieredNetworkPolicy") => Kind::TieredNetworkPolicy,
            _ => return None,
        })
    }
}

/// Reads multi-document YAML holding any of: NetworkPolicy (`networking.k8s.io/v1`),
/// ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`), AdminNetworkPolicy and
/// BaselineAdminNetworkPolicy (`policy.networking.k8s.io/v1alpha1`), Tier and
/// TieredNetworkPolicy (`palisade.dev/v1alpha1`).
///
/// Empty documents are skipped. Everything else is strict: another kind, an unknown field
/// anywhere (a typo must not widen a policy), a duplicate key, a value of the wrong type, an
/// object defined twice, or anything the API server or the CRDs would reject is an error,
/// wrapped in [`CrdError::Document`] with the document's number (from 1) and a line: where
/// the YAML parser found the error; else the line of the field at fault when its key occurs
/// once in the document; else where the document starts.
pub fn parse_manifests(yaml: &str) -> Result<Manifests, CrdError> {
    parse(yaml).map_err(|e| refine_line(yaml, e))
}

fn parse(yaml: &str) -> Result<Manifests, CrdError> {
    let mut values = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| syntax_error(index, "YAML", &e))?;
        values.push(value);
    }
    let starts = document_starts(yaml, values.len());

    let mut out = Manifests::default();
    let mut seen_policies: BTreeMap<PolicyId, usize> = BTreeMap::new();
    let mut seen_tiers: BTreeMap<String, usize> = BTreeMap::new();
    for (index, value) in values.into_iter().enumerate() {
        if value.is_null() {
            continue;
        }
        let start = starts.get(index).copied().flatten();
        let at_document = |error: CrdError| CrdError::Document {
            document: index + 1,
            line: start,
            error: Box::new(error),
        };
        let object = Object::read(value, yaml, index, start).map_err(at_document)?;
        let policy = match object.kind {
            Kind::Tier => {
                let tier: palisade::Tier = object.typed()?;
                let tier = cluster::convert_tier(&tier, Mode::Manifest).map_err(at_document)?;
                if let Some(first) = seen_tiers.insert(tier.name.clone(), index + 1) {
                    return Err(at_document(CrdError::Duplicate {
                        object: format!("Tier {}", tier.name),
                        first,
                    }));
                }
                out.tiers.push(tier);
                continue;
            }
            Kind::NetworkPolicy => netpol::convert(&object.typed()?, Mode::Manifest),
            Kind::ClusterNetworkPolicy => cluster::convert_cnp(&object.typed()?, Mode::Manifest),
            Kind::AdminNetworkPolicy => cluster::convert_anp(&object.typed()?, Mode::Manifest),
            Kind::BaselineAdminNetworkPolicy => {
                cluster::convert_banp(&object.typed()?, Mode::Manifest)
            }
            Kind::TieredNetworkPolicy => cluster::convert_tnp(&object.typed()?, Mode::Manifest),
        }
        .map_err(at_document)?;
        if let Some(first) = seen_policies.insert(policy.id.clone(), index + 1) {
            return Err(at_document(CrdError::Duplicate {
                object: policy.id.to_string(),
                first,
            }));
        }
        out.policies.push(policy);
    }
    Ok(out)
}

/// One non-empty document, as JSON, with its kind and a name for errors.
struct Object<'y> {
    kind: Kind,
    /// E.g. `NetworkPolicy default/web`.
    name: String,
    json: serde_json::Value,
    /// The whole manifest, and the document's index and first line in it.
    yaml: &'y str,
    index: usize,
    start: Option<usize>,
}

impl<'y> Object<'y> {
    fn read(
        value: serde_yaml::Value,
        yaml: &'y str,
        index: usize,
        start: Option<usize>,
    ) -> Result<Object<'y>, CrdError> {
        let json = serde_json::to_value(&value).map_err(|e| CrdError::Syntax {
            object: "document".to_string(),
            message: e.to_string(),
        })?;
        let Some(map) = json.as_object() else {
            return Err(CrdError::Syntax {
                object: "document".to_string(),
                message: "expected a Kubernetes object (a mapping with apiVersion and kind)"
                    .to_string(),
            });
        };
        let text = |field: &str| match map.get(field) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(CrdError::invalid(
                "document",
                field,
                "required (a non-empty string)",
            )),
        };
        let api_version = text("apiVersion")?;
        let kind_name = text("kind")?;
        let Some(kind) = Kind::of(&api_version, &kind_name) else {
            return Err(CrdError::UnsupportedKind {
                api_version,
                kind: kind_name,
            });
        };
        let meta = map.get("metadata");
        let field = |f: &str| {
            meta.and_then(|m| m.get(f))
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
        };
        let name = match (field("namespace"), field("name")) {
            (Some(ns), Some(name)) if kind == Kind::NetworkPolicy => {
                format!("{kind_name} {ns}/{name}")
            }
            (_, Some(name)) => format!("{kind_name} {name}"),
            (_, None) => format!("{kind_name} (unnamed)"),
        };
        Ok(Object {
            kind,
            name,
            json,
            yaml,
            index,
            start,
        })
    }

    /// Deserializes the document as `T`, then checks that serializing it back keeps every
    /// field the document wrote: a field that does not survive the round trip is unknown to
    /// `T`. Only when `T` cannot be read is the document parsed again from the YAML text, to
    /// tell the line of the error (so a manifest is parsed once when it is valid).
    fn typed<T: DeserializeOwned + Serialize>(&self) -> Result<T, CrdError> {
        let index = self.index;
        let in_document = |error: CrdError| CrdError::Document {
            document: index + 1,
            line: self.start,
            error: Box::new(error),
        };
        let typed: T = match serde_json::from_value(self.json.clone()) {
            Ok(typed) => typed,
            Err(json_error) => {
                let located = serde_yaml::Deserializer::from_str(self.yaml)
                    .nth(index)
                    .and_then(|document| T::deserialize(document).err());
                return Err(match located {
                    Some(e) => syntax_error(index, &self.name, &e),
                    None => in_document(CrdError::Syntax {
                        object: self.name.clone(),
                        message: json_error.to_string(),
                    }),
                });
            }
        };
        let back = serde_json::to_value(&typed).map_err(|e| {
            in_document(CrdError::Syntax {
                object: self.name.clone(),
                message: e.to_string(),
            })
        })?;
        if let Some(field) = first_unknown_field(&self.json, &back, "") {
            return Err(in_document(CrdError::UnknownField {
                object: self.name.clone(),
                field,
            }));
        }
        Ok(typed)
    }
}

fn syntax_error(index: usize, object: &str, e: &serde_yaml::Error) -> CrdError {
    let text = e.to_string();
    // serde_yaml appends " at line L column C"; the line goes in the wrapper instead.
    let message = match (e.location(), text.rsplit_once(" at line ")) {
        (Some(_), Some((message, _))) => message.to_string(),
        _ => text,
    };
    CrdError::Document {
        document: index + 1,
        line: e.location().map(|l| l.line()),
        error: Box::new(CrdError::Syntax {
            object: object.to_string(),
            message,
        }),
    }
}

/// The first field of `original` (a path like `spec.ingress[0].from[0].podSelecter`) that
/// `round_trip` does not have. Null values count as absent, as in Kubernetes.
pub(crate) fn first_unknown_field(
    original: &serde_json::Value,
    round_trip: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(key, value)| {
            let at = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match (value, b.get(key)) {
                (Value::Null, _) => None,
                (_, None) => Some(at),
                (value, Some(back)) => first_unknown_field(value, back, &at),
            }
        }),
        (Value::Array(a), Value::Array(b)) => {
            a.iter().zip(b).enumerate().find_map(|(i, (value, back))| {
                first_unknown_field(value, back, &format!("{path}[{i}]"))
            })
        }
        _ => None,
    }
}

/// The line (from 1) each of `count` documents starts at (the line after its `---`), when it
/// can be told from the separators; `None` otherwise.
pub(crate) fn document_starts(yaml: &str, count: usize) -> Vec<Option<usize>> {
    let separators: Vec<usize> = yaml
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            line.strip_prefix("---")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        })
        // The document's first line is the one after its separator (lines count from 1).
        .map(|(i, _)| i + 2)
        .collect();
    if separators.len() == count {
        separators.into_iter().map(Some).collect()
    } else if separators.len() + 1 == count {
        std::iter::once(Some(1))
            .chain(separators.into_iter().map(Some))
            .collect()
    } else {
        vec![None; count]
    }
}

/// Moves an error's line from its document's start to the line of the field at fault, when the
/// field's key occurs exactly once in the document (so the line cannot be the wrong one).
/// Errors from the YAML parser already have their own line.
fn refine_line(yaml: &str, error: CrdError) -> CrdError {
    let CrdError::Document {
        document,
        line: Some(start),
        error: inner,
    } = error
    else {
        return error;
    };
    let key = match inner.field() {
        Some(field) if !matches!(*inner, CrdError::Syntax { .. }) => field
            .rsplit('.')
            .next()
            .map(|last| last.split('[').next().unwrap_or(last))
            .unwrap_or(field),
        _ => "",
    };
    let mut found = yaml
        .lines()
        .enumerate()
        .skip(start.saturating_sub(1))
        .take_while(|(_, line)| {
            !line
                .strip_prefix("---")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        })
        .filter(|(_, line)| !key.is_empty() && has_key(line, key))
        .map(|(i, _)| i + 1);
    let line = match (found.next(), found.next()) {
        (Some(line), None) => line,
        _ => start,
    };
    CrdError::Document {
        document,
        line: Some(line),
        error: inner,
    }
}

/// Whether a YAML line has `key` as a mapping key (`key:`, `- key:`, `{a: 1, key: 2}`,
/// `"key":`), not merely inside a value.
fn has_key(line: &str, key: &str) -> bool {
    line.match_indices(key).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let quoted = matches!(before, Some('"' | '\''));
        let boundary = matches!(
            before,
            None | Some(' ' | '\t' | '{' | ',' | '-' | '"' | '\'')
        );
        let mut rest = &line[at + key.len()..];
        if quoted {
            rest = rest.strip_prefix(['"', '\'']).unwrap_or("");
        }
        boundary && rest.trim_start().starts_with(':')
    })
}
