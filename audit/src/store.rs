//! The store trait both backends implement, opening by URL, and retention.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use palisade_wire::audit::DecisionBatch;

use crate::model::{
    DeniedCount, PolicyTraffic, Pruned, Retention, StoredDecision, StoredGap, TopTalker,
    WriteOutcome,
};
use crate::{AuditError, DecisionFilter};

/// Which database holds the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The audit log: decisions and gaps written in batches, exactly once per
/// `(source, seq, index)`, and the questions asked of them.
#[async_trait]
pub trait AuditStore: Send + Sync {
    fn backend(&self) -> Backend;

    /// Stores batches in one transaction (group commit: under sustained load the ingest
    /// writes every batch waiting in its queue at once, which dirties each index page once
    /// for all of them); entries already stored are skipped. One outcome per batch. Any
    /// invalid batch fails the whole call, and nothing is stored.
    async fn write_batches(
        &self,
        batches: &[DecisionBatch],
        stored_at_ms: i64,
    ) -> Result<Vec<WriteOutcome>, AuditError>;

    /// Stores one batch in one transaction; entries already stored are skipped.
    async fn write_batch(
        &self,
        batch: &DecisionBatch,
        stored_at_ms: i64,
    ) -> Result<WriteOutcome, AuditError> {
        let outcomes = self
            .write_batches(std::slice::from_ref(batch), stored_at_ms)
            .await?;
        Ok(outcomes.into_iter().next().unwrap_or_default())
    }

    /// Decisions matching `filter` (newest first, or oldest first after an id).
    async fn decisions(&self, filter: &DecisionFilter) -> Result<Vec<StoredDecision>, AuditError>;

    /// Gaps whose window ends at or after `since_ms`, newest first.
    async fn gaps(&self, since_ms: i64, limit: u32) -> Result<Vec<StoredGap>, AuditError>;

    /// The `recent_denies` view (denials of the last 24 hours, newest first).
    async fn recent_denies(&self, limit: u32) -> Result<Vec<StoredDecision>, AuditError>;

    /// The `top_talkers` view (last 24 hours).
    async fn top_talkers(&self, limit: u32) -> Result<Vec<TopTalker>, AuditError>;

    /// The `traffic_per_policy` view.
    async fn traffic_per_policy(&self, limit: u32) -> Result<Vec<PolicyTraffic>, AuditError>;

    /// Denied connections since `since_ms` per (namespace, policy, direction): the policy
    /// whose rule denied, or each policy isolating the pod when no rule matched.
    async fn denied_counts_since(&self, since_ms: i64) -> Result<Vec<DeniedCount>, AuditError>;

    /// Deletes at most `chunk` decisions last seen before `cutoff_ms`; returns how many.
    async fn delete_decisions_before(&self, cutoff_ms: i64, chunk: u32) -> Result<u64, AuditError>;

    /// Deletes at most `chunk` gaps that ended before `cutoff_ms`.
    async fn delete_gaps_before(&self, cutoff_ms: i64, chunk: u32) -> Result<u64, AuditError>;

    /// How many decision rows are stored.
    async fn count_decisions(&self) -> Result<u64, AuditError>;

    /// Bytes the database takes for retention by size: SQLite, the pages in use (free pages
    /// left out, they are reused before the file grows). `None` on PostgreSQL: a deleted
    /// row's space is reused but never leaves the relation's size, so no cheap measure
    /// goes down as rows are deleted (size it with `max_rows` there).
    async fn used_bytes(&self) -> Result<Option<u64>, AuditError>;

    /// Deletes the `n` (at most) decisions last seen longest ago.
    async fn delete_oldest_decisions(&self, n: u32) -> Result<u64, AuditError>;

    /// Closes the connections.
    async fn close(&self);
}

/// Opens (creating a SQLite file and its folder when missing) and migrates the database
/// at `url`: `sqlite://PATH` / `sqlite:PATH`, or `postgres://` / `postgresql://`.
pub async fn open(url: &str) -> Result<Arc<dyn AuditStore>, AuditError> {
    match backend_of(url)? {
        Backend::Sqlite => Ok(Arc::new(crate::sqlite::SqliteStore::open(url).await?)),
        Backend::Postgres => Ok(Arc::new(crate::postgres::PgStore::open(url).await?)),
    }
}

/// Opens an existing audit database for reading (the CLI): nothing is created or
/// migrated, and a database whose schema is not the latest is refused with a clear error.
pub async fn open_existing(url: &str) -> Result<Arc<dyn AuditStore>, AuditError> {
    match backend_of(url)? {
        Backend::Sqlite => Ok(Arc::new(
            crate::sqlite::SqliteStore::open_existing(url).await?,
        )),
        Backend::Postgres => Ok(Arc::new(
            crate::postgres::PgStore::open_existing(url).await?,
        )),
    }
}

/// The latest migration of `migrator` must have been applied.
pub(crate) async fn check_schema<DB>(
    pool: &sqlx::Pool<DB>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), AuditError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    (Option<i64>,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let mut conn = pool.acquire().await?;
    let found: Result<(Option<i64>,), sqlx::Error> =
        sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut *conn)
            .await;
    let version = match found {
        Ok((v,)) => v.unwrap_or(0),
        // No migrations table: not an audit database (yet).
        Err(sqlx::Error::Database(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    if version < latest {
        return Err(AuditError::Schema(format!(
            "the database is at schema version {version}, not {latest}: not an audit \
             database, or one the operator has not migrated yet"
        )));
    }
    Ok(())
}

/// Which backend a URL names.
pub fn backend_of(url: &str) -> Result<Backend, AuditError> {
    let scheme = url.split(':').next().unwrap_or("");
    match scheme {
        "sqlite" => Ok(Backend::Sqlite),
        "postgres" | "postgresql" => Ok(Backend::Postgres),
        _ => Err(AuditError::Url {
            url: redact(url),
            reason: "expected sqlite://PATH or postgres://...".into(),
        }),
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            let userinfo = &url[start + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..start + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// One retention pass: decisions and gaps older than the age limit, then the oldest
/// decisions over the row limit, each deleted `chunk` rows per statement with a short
/// pause between statements so the ingest's writes interleave.
pub async fn prune(
    store: &dyn AuditStore,
    now_ms: i64,
    retention: &Retention,
) -> Result<Pruned, AuditError> {
    let chunk = retention.chunk.max(1);
    let pause = Duration::from_millis(5);
    let mut pruned = Pruned::default();
    if let Some(age) = retention.max_age_ms {
        let cutoff = now_ms.saturating_sub(age);
        loop {
            let n = store.delete_decisions_before(cutoff, chunk).await?;
            pruned.chunks += 1;
            pruned.by_age += n;
            if n < u64::from(chunk) {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        loop {
            let n = store.delete_gaps_before(cutoff, chunk).await?;
            pruned.chunks += 1;
            pruned.gaps += n;
            if n < u64::from(chunk) {
                break;
            }
            tokio::time::sleep(pause).await;
        }
    }
    let rows_for_bytes = match retention.max_bytes {
        Some(max) => rows_within(store, max).await?,
        None => None,
    };
    let max_rows = match (retention.max_rows, rows_for_bytes) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(max) = max_rows {
        let mut excess = store.count_decisions().await?.saturating_sub(max);
        while excess > 0 {
            let n = store
                .delete_oldest_decisions(chunk.min(u32::try_from(excess).unwrap_or(u32::MAX)))
                .await?;
            pruned.chunks += 1;
            pruned.by_size += n;
            if n == 0 {
                break;
            }
            excess = excess.saturating_sub(n);
            tokio::time::sleep(pause).await;
        }
    }
    Ok(pruned)
}

/// How many decision rows fit in `max_bytes`, from the bytes a row takes on average now
/// (pages in use over rows); `None` when the store is within it already. Converted once per
/// pass: a pass deletes the excess it measured. Deleting the oldest rows frees whole pages
/// of the table and of the time index, but leaves the namespace indexes' pages partly
/// filled, so the next pass may find the file still over and delete some more: the limit is
/// kept from above, never exceeded for long.
async fn rows_within(store: &dyn AuditStore, max_bytes: u64) -> Result<Option<u64>, AuditError> {
    let Some(used) = store.used_bytes().await? else {
        return Err(AuditError::Unsupported(
            "retention by bytes needs SQLite (on PostgreSQL, limit the rows)".to_string(),
        ));
    };
    if used <= max_bytes {
        return Ok(None);
    }
    let rows = store.count_decisions().await?;
    if rows == 0 {
        return Ok(None);
    }
    let fit = u128::from(rows) * u128::from(max_bytes) / u128::from(used);
    Ok(Some(u64::try_from(fit).unwrap_or(u64::MAX)))
}

/// A row of the denied-counts query: direction, source and destination namespaces,
/// policy, isolated_by (JSON), connections.
pub(crate) type DeniedGroup = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    i64,
);

/// Groups `(direction, src_namespace, dst_namespace, policy, isolated_by JSON, sum)` rows
/// into per-policy counts.
pub(crate) fn denied_counts(rows: Vec<DeniedGroup>) -> Vec<DeniedCount> {
    let mut out: std::collections::BTreeMap<(String, String, String), i64> = Default::default();
    for (direction, src_ns, dst_ns, policy, isolated_by, sum) in rows {
        let namespace = if direction == "egress" {
            src_ns
        } else {
            dst_ns
        }
        .unwrap_or_default();
        let policies = match policy {
            Some(p) => vec![p],
            None => crate::model::IsolatedBy::try_from(isolated_by)
                .map(|i| i.0)
                .unwrap_or_default(),
        };
        for p in policies {
            *out.entry((namespace.clone(), p, direction.clone()))
                .or_default() += sum;
        }
    }
    out.into_iter()
        .map(|((namespace, policy, direction), count)| DeniedCount {
            namespace,
            policy,
            direction,
            count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend_and_passwords_are_hidden() {
        assert_eq!(backend_of("sqlite:///a/b.db").ok(), Some(Backend::Sqlite));
        assert_eq!(
            backend_of("postgres://u@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert!(backend_of("mysql://h/db").is_err());
        assert_eq!(
            redact("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
    }

    #[test]
    fn denials_without_a_rule_count_for_every_isolating_policy() {
        let rows = vec![
            (
                "ingress".to_string(),
                None,
                Some("prod".to_string()),
                None,
                r#"["NetworkPolicy prod/a","NetworkPolicy prod/b"]"#.to_string(),
                3,
            ),
            (
                "ingress".to_string(),
                None,
                Some("prod".to_string()),
                Some("NetworkPolicy prod/a".to_string()),
                "[]".to_string(),
                2,
            ),
            (
                "egress".to_string(),
                Some("dev".to_string()),
                None,
                Some("NetworkPolicy dev/x".to_string()),
                "[]".to_string(),
                1,
            ),
        ];
        let counts = denied_counts(rows);
        let got: Vec<_> = counts
            .iter()
            .map(|c| (c.namespace.as_str(), c.policy.as_str(), c.count))
            .collect();
        assert_eq!(
            got,
            vec![
                ("dev", "NetworkPolicy dev/x", 1),
                ("prod", "NetworkPolicy prod/a", 5),
                ("prod", "NetworkPolicy prod/b", 3)
            ]
        );
    }
}
