//! The crate's one error type.

use thiserror::Error;

/// An object Palisade cannot read or convert, naming the object and the field at fault.
///
/// Objects are named like `NetworkPolicy default/web`, `ClusterNetworkPolicy deny-all` or
/// `Tier gold`; fields by their path in the object, like
/// `spec.ingress[0].from[1].podSelector.matchExpressions[0].operator`.
/// [`crate::convert::parse_manifests`] wraps each error in [`CrdError::Document`] with the
/// document's number and a line.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CrdError {
    /// A field holds a value Palisade cannot accept (or a required field is missing).
    #[error("{object}: field {field}: {reason}")]
    Invalid {
        object: String,
        field: String,
        reason: String,
    },
    /// A field the object's kind does not have. Manifests never drop fields silently: a typo
    /// such as `podSelecter` would otherwise widen a policy.
    #[error("{object}: unknown field {field}")]
    UnknownField { object: String, field: String },
    /// The YAML cannot be read, or a document does not have the shape of its kind (a wrong
    /// type, a missing required field).
    #[error("{object}: {message}")]
    Syntax { object: String, message: String },
    /// A document of a kind (or a version of it) Palisade does not read.
    #[error(
        "unsupported object: apiVersion {api_version:?}, kind {kind:?} (Palisade reads \
         networking.k8s.io/v1 NetworkPolicy, policy.networking.k8s.io/v1alpha2 \
         ClusterNetworkPolicy, policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy and \
         BaselineAdminNetworkPolicy, palisade.dev/v1alpha1 Tier and TieredNetworkPolicy)"
    )]
    UnsupportedKind { api_version: String, kind: String },
    /// Two documents define the same object.
    #[error("{object} is defined more than once (first in document {first})")]
    Duplicate { object: String, first: usize },
    /// An error in one document of a multi-document manifest. `document` counts from 1;
    /// `line` (from 1) is where the error is when the YAML parser knows it, else the line the
    /// document starts at.
    #[error("document {document}{}: {error}", at_line(*.line))]
    Document {
        document: usize,
        line: Option<usize>,
        error: Box<CrdError>,
    },
}

fn at_line(line: Option<usize>) -> String {
    match line {
        Some(line) => format!(" (line {line})"),
        None => String::new(),
    }
}

impl CrdError {
    pub(crate) fn invalid(
        object: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        CrdError::Invalid {
            object: object.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The error without its [`CrdError::Document`] wrapper.
    pub fn innermost(&self) -> &CrdError {
        match self {
            CrdError::Document { error, .. } => error.innermost(),
            other => other,
        }
    }

    /// The field at fault, when the error names one.
    pub fn field(&self) -> Option<&str> {
        match self.innermost() {
            CrdError::Invalid { field, .. } | CrdError::UnknownField { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The object at fault, when the error names one.
    pub fn object(&self) -> Option<&str> {
        match self.innermost() {
            CrdError::Invalid { object, .. }
            | CrdError::UnknownField { object, .. }
            | CrdError::Syntax { object, .. }
            | CrdError::Duplicate { object, .. } => Some(object),
            _ => None,
        }
    }

    /// The document (from 1) of a manifest the error is in.
    pub fn document(&self) -> Option<usize> {
        match self {
            CrdError::Document { document, .. } => Some(*document),
            _ => None,
        }
    }

    /// The line (from 1) of a manifest the error is at, or its document starts at.
    pub fn line(&self) -> Option<usize> {
        match self {
            CrdError::Document { line, .. } => *line,
            _ => None,
        }
    }
}
