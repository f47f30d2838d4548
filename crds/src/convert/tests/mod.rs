//! Unit tests of the conversions: one test per semantic rule and per error, each written so
//! that it fails if the rule it names is broken.

mod cluster;
mod manifest;
mod netpol;

use palisade_policy::model::{LabelSelector, Operator, Policy, Requirement};

use super::parse_manifests;
use crate::CrdError;

/// The one policy a manifest converts to (strict, manifest mode).
pub(super) fn policy(yaml: &str) -> Policy {
    let m = parse_manifests(yaml).unwrap_or_else(|e| panic!("unexpected error: {e}\n{yaml}"));
    assert_eq!(m.policies.len(), 1, "{m:?}");
    assert!(m.tiers.is_empty());
    m.policies.into_iter().next().expect("one policy")
}

/// The error a manifest gives.
pub(super) fn error(yaml: &str) -> CrdError {
    match parse_manifests(yaml) {
        Ok(m) => panic!("expected an error, got {m:?}\n{yaml}"),
        Err(e) => e,
    }
}

/// Asserts that a manifest is rejected for `field` (an Invalid or UnknownField error).
#[track_caller]
pub(super) fn assert_field_error(yaml: &str, field: &str) -> CrdError {
    let e = error(yaml);
    assert_eq!(e.field(), Some(field), "wrong field in: {e}");
    e
}

/// A selector with only matchLabels.
pub(super) fn labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        match_expressions: vec![],
    }
}

pub(super) fn requirement(key: &str, operator: Operator, values: &[&str]) -> Requirement {
    Requirement {
        key: key.to_string(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

pub(super) fn cidr(text: &str) -> ipnet::IpNet {
    text.parse().expect("a CIDR")
}
