//! The audit store's one error type.

use thiserror::Error;

/// What can go wrong opening, writing or reading the audit database.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The `--audit-database` / `--database` URL names no backend we have.
    #[error("audit database URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// The database could not be reached or written (transient: retry).
    #[error("audit database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrating the audit database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A batch that cannot be stored as sent (never retried: the same input fails again).
    #[error("decision batch {origin} #{seq}: {reason}")]
    InvalidBatch {
        origin: String,
        seq: u64,
        reason: String,
    },
    /// The database is not (yet) an audit database of this version.
    #[error("audit database: {0}")]
    Schema(String),
    /// A query filter out of range.
    #[error("audit query: {0}")]
    Filter(String),
    /// A setting this backend cannot honour.
    #[error("audit database: {0}")]
    Unsupported(String),
    /// A stored row that does not decode (written by something else).
    #[error("audit database row {id}: {reason}")]
    Row { id: i64, reason: String },
}

impl AuditError {
    /// True when the same call may succeed later (the database is down, busy, or full),
    /// false when the input itself is at fault.
    pub fn is_transient(&self) -> bool {
        matches!(self, AuditError::Database(_) | AuditError::Migrate(_))
    }
}
