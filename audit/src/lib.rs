//! Palisade's audit log: where the operator stores every flow decision the enforcers
//! report, and how it is queried.
//!
//! ```text
//!   operator:  audit store (sqlx) ◄── decision batches ◄── enforcer: NFLOG reader
//!                    │
//!                    ▼
//!   query: SQL, `palisade audit`, HTTP API
//! ```
//!
//! - [`AuditStore`]: the store, with two backends on sqlx: SQLite ([`sqlite`], a file in WAL
//!   mode, the default) and PostgreSQL ([`postgres`]); no `sqlx::Any`. Each runs its own
//!   forward-only migrations (`migrations/sqlite`, `migrations/postgres`) when opened.
//! - Writes are batched (multi-row `INSERT` in one transaction on SQLite, `UNNEST` on
//!   PostgreSQL) and idempotent on `(source, seq, idx)`.
//! - [`filter`]: the query builder, every value a bound parameter.
//! - [`prune`]: retention by age and by size, in small chunks.
//! - [`output`]: table, JSON and CSV renderings shared by the CLI and the HTTP API.

pub mod error;
pub mod filter;
pub mod model;
pub mod output;
#[cfg(feature = "harness")]
pub mod pg_harness;
pub mod postgres;
mod rows;
pub mod sqlite;
pub mod store;

pub use error::AuditError;
pub use filter::{
    parse_direction, parse_time, parse_verdict, BuiltQuery, DecisionFilter, Param, Placeholders,
};
pub use model::{
    DeniedCount, IsolatedBy, PolicyTraffic, Pruned, Retention, StoredDecision, StoredGap,
    TopTalker, WriteOutcome,
};
/// The sqlx the pools are of (tests and tools that use [`sqlite::SqliteStore::pool`]).
pub use sqlx;
pub use store::{backend_of, open, open_existing, prune, redact, AuditStore, Backend};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
