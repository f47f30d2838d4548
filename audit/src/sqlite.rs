//! The SQLite backend: one file in WAL mode (readers never block the writer), every batch
//! one transaction of multi-row `INSERT ... ON CONFLICT DO NOTHING` statements.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use palisade_wire::audit::DecisionBatch;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use crate::filter::{Param, Placeholders};
use crate::model::{
    DeniedCount, PolicyTraffic, StoredDecision, StoredGap, TopTalker, WriteOutcome,
};
use crate::rows::{flatten, BatchRows};
use crate::store::{denied_counts, AuditStore, Backend};
use crate::{AuditError, DecisionFilter};

/// The migrations of `migrations/sqlite`, in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// Rows per `INSERT` (25 parameters each, under SQLite's 32,766): a batch of the
/// enforcer's usual size is one statement.
const ROWS_PER_INSERT: usize = 1_300;

const DECISION_COLUMNS: &str = "INSERT INTO decisions (source, seq, idx, first_seen_ms, \
    last_seen_ms, count, node, direction, verdict, protocol, src_ip, src_port, dst_ip, \
    dst_port, src_namespace, src_pod, dst_namespace, dst_pod, rule_id, tier, policy, \
    rule_index, rule_name, isolated_by, stored_at_ms) ";

/// The audit log in a SQLite file.
pub struct SqliteStore {
    /// Readers.
    pool: SqlitePool,
    /// The one writer: a single connection keeps its page cache across batches (a
    /// connection whose cache another one's commit invalidated reads its pages again;
    /// with writes spread over a pool that halved the rate).
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating the file and its folder) and migrates to the latest schema.
    pub async fn open(url: &str) -> Result<Self, AuditError> {
        let store = Self::open_unmigrated(url).await?;
        MIGRATOR.run(&store.writer).await?;
        Ok(store)
    }

    /// Opens without migrating (tests of the upgrade path run their own migrator).
    pub async fn open_unmigrated(url: &str) -> Result<Self, AuditError> {
        Self::connect(url, true).await
    }

    /// Opens an existing database for reading: no file is created, nothing migrated.
    pub async fn open_existing(url: &str) -> Result<Self, AuditError> {
        let store = Self::connect(url, false).await?;
        crate::store::check_schema(&store.pool, &MIGRATOR).await?;
        Ok(store)
    }

    async fn connect(url: &str, create: bool) -> Result<Self, AuditError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| AuditError::Url {
                url: url.to_string(),
                reason: e.to_string(),
            })?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before the batch is acknowledged (and the enforcer
            // forgets it), even across a power loss.
            .synchronous(SqliteSynchronous::Full)
            // 64 MiB of page cache per connection (the default is 2 MiB): the namespace
            // and pod indexes take their inserts at random places.
            .pragma("cache_size", "-65536")
            // Checkpoint every 20,000 pages (80 MiB of WAL) rather than 1,000: an index page
            // dirtied by many batches is copied into the database once per checkpoint, not
            // once per few batches (sustained ingest 1.5x).
            .pragma("wal_autocheckpoint", "20000")
            .busy_timeout(Duration::from_secs(2));
        let parent = options
            .get_filename()
            .parent()
            .map(std::path::Path::to_path_buf);
        if let Some(dir) = parent.filter(|d| create && !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(&dir).map_err(|e| AuditError::Url {
                url: url.to_string(),
                reason: format!("creating {}: {e}", dir.display()),
            })?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool, writer })
    }

    /// The connection pool (tests, benchmarks).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn write_batches(
        &self,
        batches: &[DecisionBatch],
        stored_at_ms: i64,
    ) -> Result<Vec<WriteOutcome>, AuditError> {
        let all = batches.iter().map(flatten).collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.writer.begin().await?;
        let mut outcomes = Vec::with_capacity(all.len());
        for rows in &all {
            outcomes.push(insert_rows(&mut tx, rows, stored_at_ms).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn decisions(&self, filter: &DecisionFilter) -> Result<Vec<StoredDecision>, AuditError> {
        let built = filter.build(Placeholders::Question)?;
        let mut q = sqlx::query_as::<_, StoredDecision>(&built.sql);
        for p in &built.params {
            q = match p {
                Param::Text(s) => q.bind(s.as_str()),
                Param::Int(i) => q.bind(*i),
            };
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    async fn gaps(&self, since_ms: i64, limit: u32) -> Result<Vec<StoredGap>, AuditError> {
        Ok(sqlx::query_as(
            "SELECT * FROM gaps WHERE to_ms >= ? ORDER BY to_ms DESC, id DESC LIMIT ?",
        )
        .bind(since_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn recent_denies(&self, limit: u32) -> Result<Vec<StoredDecision>, AuditError> {
        Ok(sqlx::query_as("SELECT * FROM recent_denies LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn top_talkers(&self, limit: u32) -> Result<Vec<TopTalker>, AuditError> {
        Ok(sqlx::query_as("SELECT * FROM top_talkers LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn traffic_per_policy(&self, limit: u32) -> Result<Vec<PolicyTraffic>, AuditError> {
        Ok(sqlx::query_as("SELECT * FROM traffic_per_policy LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn denied_counts_since(&self, since_ms: i64) -> Result<Vec<DeniedCount>, AuditError> {
        let rows = sqlx::query_as(
            "SELECT direction, src_namespace, dst_namespace, policy, isolated_by, \
             CAST(SUM(count) AS BIGINT) FROM decisions \
             WHERE verdict = 'deny' AND last_seen_ms >= ? \
             GROUP BY direction, src_namespace, dst_namespace, policy, isolated_by",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(denied_counts(rows))
    }

    async fn delete_decisions_before(&self, cutoff_ms: i64, chunk: u32) -> Result<u64, AuditError> {
        Ok(sqlx::query(
            "DELETE FROM decisions WHERE id IN (SELECT id FROM decisions \
             WHERE last_seen_ms < ? ORDER BY last_seen_ms LIMIT ?)",
        )
        .bind(cutoff_ms)
        .bind(i64::from(chunk))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn delete_gaps_before(&self, cutoff_ms: i64, chunk: u32) -> Result<u64, AuditError> {
        Ok(sqlx::query(
            "DELETE FROM gaps WHERE id IN (SELECT id FROM gaps \
             WHERE to_ms < ? ORDER BY to_ms LIMIT ?)",
        )
        .bind(cutoff_ms)
        .bind(i64::from(chunk))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn count_decisions(&self) -> Result<u64, AuditError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM decisions")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn used_bytes(&self) -> Result<Option<u64>, AuditError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (p.page_count - f.freelist_count) * s.page_size \
             FROM pragma_page_count() AS p, pragma_freelist_count() AS f, pragma_page_size() AS s",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(u64::try_from(n).unwrap_or(0)))
    }

    async fn delete_oldest_decisions(&self, n: u32) -> Result<u64, AuditError> {
        Ok(sqlx::query(
            "DELETE FROM decisions WHERE id IN (SELECT id FROM decisions \
             ORDER BY last_seen_ms LIMIT ?)",
        )
        .bind(i64::from(n))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// One batch's rows, inside the caller's transaction.
async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    rows: &BatchRows,
    stored_at_ms: i64,
) -> Result<WriteOutcome, AuditError> {
    let mut out = WriteOutcome::default();
    for chunk in rows.decisions.chunks(ROWS_PER_INSERT) {
        let mut qb = QueryBuilder::<Sqlite>::new(DECISION_COLUMNS);
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(rows.source.as_str())
                .push_bind(rows.seq)
                .push_bind(r.idx)
                .push_bind(r.first_seen_ms)
                .push_bind(r.last_seen_ms)
                .push_bind(r.count)
                .push_bind(r.node.as_str())
                .push_bind(r.direction)
                .push_bind(r.verdict)
                .push_bind(r.protocol.as_str())
                .push_bind(r.src_ip.as_str())
                .push_bind(r.src_port)
                .push_bind(r.dst_ip.as_str())
                .push_bind(r.dst_port)
                .push_bind(r.src_namespace.as_deref())
                .push_bind(r.src_pod.as_deref())
                .push_bind(r.dst_namespace.as_deref())
                .push_bind(r.dst_pod.as_deref())
                .push_bind(r.rule_id.as_str())
                .push_bind(r.tier.as_str())
                .push_bind(r.policy.as_deref())
                .push_bind(r.rule_index)
                .push_bind(r.rule_name.as_deref())
                .push_bind(r.isolated_by.as_str())
                .push_bind(stored_at_ms);
        });
        qb.push(" ON CONFLICT (source, seq, idx) DO NOTHING");
        let n = qb.build().execute(&mut **tx).await?.rows_affected();
        out.decisions += n;
        out.duplicates += chunk.len() as u64 - n;
    }
    if !rows.gaps.is_empty() {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO gaps (source, seq, idx, node, from_ms, to_ms, lost, reason, \
                 stored_at_ms) ",
        );
        qb.push_values(&rows.gaps, |mut b, g| {
            b.push_bind(rows.source.as_str())
                .push_bind(rows.seq)
                .push_bind(g.idx)
                .push_bind(g.node.as_str())
                .push_bind(g.from_ms)
                .push_bind(g.to_ms)
                .push_bind(g.lost)
                .push_bind(g.reason.as_str())
                .push_bind(stored_at_ms);
        });
        qb.push(" ON CONFLICT (source, seq, idx) DO NOTHING");
        let n = qb.build().execute(&mut **tx).await?.rows_affected();
        out.gaps += n;
        out.duplicates += rows.gaps.len() as u64 - n;
    }
    Ok(out)
}
