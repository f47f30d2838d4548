//! Conversion of every policy kind Palisade reads into the engine's model
//! ([`palisade_policy::model`]).
//!
//! - [`parse_manifests`] reads multi-document YAML (a manifest directory's files, a scenario's
//!   `policies`) strictly: an unknown field anywhere is an error, never dropped.
//! - The per-object functions ([`network_policy`], [`cluster_network_policy`],
//!   [`admin_network_policy`], [`baseline_admin_network_policy`], [`tiered_network_policy`],
//!   [`tier`]) are what the operator calls on objects read from the API server. There, the
//!   API server has already pruned fields unknown to the installed CRD; a peer (or port) that
//!   carries a field only a newer upstream CRD knows, or that has no field set at all, is what
//!   upstream tells implementations to fail closed on, so it becomes
//!   [`Peer::Unsupported`](palisade_policy::model::Peer::Unsupported) instead of an error.
//!
//! Both paths check everything the API server (or the CRD's schema and CEL rules) would check
//! and that changes what a policy means: selectors, CIDRs, ports, "exactly one of", priorities,
//! rule counts, reserved tier names.

mod cluster;
pub mod core;
mod manifest;
mod netpol;
mod objects;

#[cfg(test)]
mod tests;

use ipnet::IpNet;
use palisade_policy::model::{LabelSelector, Labels, Operator, Protocol, Requirement};

use crate::CrdError;

pub use cluster::{
    admin_network_policy, baseline_admin_network_policy, cluster_network_policy, tier,
    tiered_network_policy,
};
pub use manifest::{parse_manifests, Manifests};
pub use netpol::network_policy;
pub use objects::{parse_objects, ClusterObject, ObjectDocument, ObjectKey};

/// Where an object comes from, which decides what an unknown field means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A manifest or scenario file: an unknown field is an error.
    Manifest,
    /// The API server: an unknown peer or port field fails closed.
    Cluster,
}

/// The object being converted: its name for errors and where it comes from.
pub(crate) struct Ctx {
    pub(crate) object: String,
    pub(crate) mode: Mode,
}

impl Ctx {
    pub(crate) fn new(object: impl Into<String>, mode: Mode) -> Self {
        Ctx {
            object: object.into(),
            mode,
        }
    }

    pub(crate) fn invalid(&self, field: impl Into<String>, reason: impl Into<String>) -> CrdError {
        CrdError::invalid(self.object.clone(), field, reason)
    }

    pub(crate) fn unknown_field(&self, field: impl Into<String>) -> CrdError {
        CrdError::UnknownField {
            object: self.object.clone(),
            field: field.into(),
        }
    }
}

/// Converts a Kubernetes label selector, checking its expressions as the API server does for
/// NetworkPolicies: `In`/`NotIn` need values, `Exists`/`DoesNotExist` take none, and no other
/// operator exists. `path` is the selector's own path (e.g. `spec.podSelector`).
pub(crate) fn selector(
    ctx: &Ctx,
    path: &str,
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<LabelSelector, CrdError> {
    let match_labels: Labels = sel.match_labels.clone().unwrap_or_default().into();
    let mut match_expressions = Vec::new();
    for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        if expr.key.is_empty() {
            return Err(ctx.invalid(format!("{at}.key"), "must not be empty"));
        }
        let operator = match expr.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(ctx.invalid(
                    format!("{at}.operator"),
                    format!(
                        "unknown operator {other:?} (must be In, NotIn, Exists or DoesNotExist)"
                    ),
                ))
            }
        };
        let values = expr.values.clone().unwrap_or_default();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(ctx.invalid(
                    format!("{at}.values"),
                    "must be non-empty when the operator is In or NotIn",
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(ctx.invalid(
                    format!("{at}.values"),
                    "must be empty when the operator is Exists or DoesNotExist",
                ))
            }
            _ => {}
        }
        match_expressions.push(Requirement {
            key: expr.key.clone(),
            operator,
            values,
        });
    }
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}

/// Parses a CIDR. Host bits are accepted and cleared (`10.0.0.1/24` is `10.0.0.0/24`), as the
/// API server's legacy CIDR validation and every CNI do; a missing prefix length is an error.
pub(crate) fn cidr(ctx: &Ctx, path: &str, text: &str) -> Result<IpNet, CrdError> {
    text.parse::<IpNet>().map(|net| net.trunc()).map_err(|_| {
        ctx.invalid(
            path,
            format!("{text:?} is not a CIDR (such as 10.0.0.0/8 or fd00::/8)"),
        )
    })
}

/// A port number as written (`i32`) checked to be 1..=65535.
pub(crate) fn port_number(ctx: &Ctx, path: &str, port: i32) -> Result<u16, CrdError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| ctx.invalid(path, format!("{port} is not a port (1..=65535)")))
}

/// An inclusive port range checked to be 1..=65535 with `start <= end`.
pub(crate) fn port_range(
    ctx: &Ctx,
    path: &str,
    protocol: Protocol,
    start: i32,
    end: i32,
) -> Result<palisade_policy::model::PortMatch, CrdError> {
    let s = port_number(ctx, &format!("{path}.start"), start)?;
    let e = port_number(ctx, &format!("{path}.end"), end)?;
    if s > e {
        return Err(ctx.invalid(
            format!("{path}.end"),
            format!("{end} is less than start {start}"),
        ));
    }
    Ok(palisade_policy::model::PortMatch::Range {
        protocol,
        start: s,
        end: e,
    })
}

/// A protocol as written in Kubernetes ports (`TCP`, `UDP`, `SCTP`; case-sensitive).
pub(crate) fn protocol(ctx: &Ctx, path: &str, text: &str) -> Result<Protocol, CrdError> {
    match text {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(ctx.invalid(
            path,
            format!("unsupported protocol {other:?} (must be TCP, UDP or SCTP)"),
        )),
    }
}

/// Whether `name` is a valid port name (IANA_SVC_NAME, as the API server checks container and
/// NetworkPolicy port names): 1..=15 characters of `a-z`, `0-9` and `-`, at least one letter,
/// no leading, trailing or doubled `-`.
pub(crate) fn is_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Whether `name` is a DNS label (RFC 1123): 1..=63 characters of `a-z`, `0-9` and `-`,
/// starting and ending with an alphanumeric.
pub(crate) fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The non-empty `metadata.name` of an object, or an error naming `kind`.
pub(crate) fn object_name<'a>(
    kind: &str,
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<&'a str, CrdError> {
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(CrdError::invalid(
            format!("{kind} (unnamed)"),
            "metadata.name",
            "required",
        )),
    }
}
