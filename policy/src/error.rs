//! The engine's one error type.

use thiserror::Error;

/// An object the engine cannot accept, naming the object and the field at fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// A field holds a value the engine cannot accept.
    #[error("{object}: field {field}: {reason}")]
    Invalid {
        object: String,
        field: String,
        reason: String,
    },
}

impl PolicyError {
    pub fn invalid(
        object: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        PolicyError::Invalid {
            object: object.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}
