//! The PostgreSQL backend: every batch one transaction, its decisions inserted by one
//! `INSERT ... SELECT FROM UNNEST(column arrays) ON CONFLICT DO NOTHING` (one round trip
//! and one statement plan whatever the batch's size).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use palisade_wire::audit::DecisionBatch;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::filter::{Param, Placeholders};
use crate::model::{
    DeniedCount, PolicyTraffic, StoredDecision, StoredGap, TopTalker, WriteOutcome,
};
use crate::rows::{flatten, BatchRows};
use crate::store::{denied_counts, AuditStore, Backend};
use crate::{AuditError, DecisionFilter};

/// The migrations of `migrations/postgres`, in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

const INSERT_DECISIONS: &str = "INSERT INTO decisions (source, seq, idx, first_seen_ms, \
    last_seen_ms, count, node, direction, verdict, protocol, src_ip, src_port, dst_ip, \
    dst_port, src_namespace, src_pod, dst_namespace, dst_pod, rule_id, tier, policy, \
    rule_index, rule_name, isolated_by, stored_at_ms) \
    SELECT $1::text, $2::bigint, u.*, $25::bigint FROM UNNEST($3::bigint[], $4::bigint[], \
    $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
    $12::bigint[], $13::text[], $14::bigint[], $15::text[], $16::text[], $17::text[], \
    $18::text[], $19::text[], $20::text[], $21::text[], $22::bigint[], $23::text[], \
    $24::text[]) AS u \
    ON CONFLICT (source, seq, idx) DO NOTHING";

const INSERT_GAPS: &str = "INSERT INTO gaps (source, seq, idx, node, from_ms, to_ms, lost, \
    reason, stored_at_ms) \
    SELECT $1::text, $2::bigint, u.*, $9::bigint FROM UNNEST($3::bigint[], $4::text[], \
    $5::bigint[], $6::bigint[], $7::bigint[], $8::text[]) AS u \
    ON CONFLICT (source, seq, idx) DO NOTHING";

/// The audit log in a PostgreSQL database.
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects and migrates to the latest schema.
    pub async fn open(url: &str) -> Result<Self, AuditError> {
        let store = Self::open_unmigrated(url).await?;
        MIGRATOR.run(&store.pool).await?;
        Ok(store)
    }

    /// Connects for reading: nothing migrated; the schema must be there.
    pub async fn open_existing(url: &str) -> Result<Self, AuditError> {
        let store = Self::open_unmigrated(url).await?;
        crate::store::check_schema(&store.pool, &MIGRATOR).await?;
        Ok(store)
    }

    /// Connects without migrating (tests of the upgrade path run their own migrator).
    pub async fn open_unmigrated(url: &str) -> Result<Self, AuditError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| AuditError::Url {
            url: crate::redact(url),
            reason: e.to_string(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        Ok(PgStore { pool })
    }

    /// The connection pool (tests, benchmarks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The batch's decisions as one array per column.
async fn insert_decisions(
    tx: &mut sqlx::PgConnection,
    rows: &BatchRows,
    stored_at_ms: i64,
) -> Result<u64, sqlx::Error> {
    let d = &rows.decisions;
    let col_i = |f: fn(&crate::rows::DecisionRow) -> i64| d.iter().map(f).collect::<Vec<_>>();
    let col_oi =
        |f: fn(&crate::rows::DecisionRow) -> Option<i64>| d.iter().map(f).collect::<Vec<_>>();
    let col_s = |f: fn(&crate::rows::DecisionRow) -> &str| d.iter().map(f).collect::<Vec<&str>>();
    let col_os = |f: fn(&crate::rows::DecisionRow) -> Option<&str>| {
        d.iter().map(f).collect::<Vec<Option<&str>>>()
    };
    Ok(sqlx::query(INSERT_DECISIONS)
        .bind(rows.source.as_str())
        .bind(rows.seq)
        .bind(col_i(|r| r.idx))
        .bind(col_i(|r| r.first_seen_ms))
        .bind(col_i(|r| r.last_seen_ms))
        .bind(col_i(|r| r.count))
        .bind(col_s(|r| r.node.as_str()))
        .bind(col_s(|r| r.direction))
        .bind(col_s(|r| r.verdict))
        .bind(col_s(|r| r.protocol.as_str()))
        .bind(col_s(|r| r.src_ip.as_str()))
        .bind(col_oi(|r| r.src_port))
        .bind(col_s(|r| r.dst_ip.as_str()))
        .bind(col_oi(|r| r.dst_port))
        .bind(col_os(|r| r.src_namespace.as_deref()))
        .bind(col_os(|r| r.src_pod.as_deref()))
        .bind(col_os(|r| r.dst_namespace.as_deref()))
        .bind(col_os(|r| r.dst_pod.as_deref()))
        .bind(col_s(|r| r.rule_id.as_str()))
        .bind(col_s(|r| r.tier.as_str()))
        .bind(col_os(|r| r.policy.as_deref()))
        .bind(col_oi(|r| r.rule_index))
        .bind(col_os(|r| r.rule_name.as_deref()))
        .bind(col_s(|r| r.isolated_by.as_str()))
        .bind(stored_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected())
}

async fn insert_gaps(
    tx: &mut sqlx::PgConnection,
    rows: &BatchRows,
    stored_at_ms: i64,
) -> Result<u64, sqlx::Error> {
    let g = &rows.gaps;
    Ok(sqlx::query(INSERT_GAPS)
        .bind(rows.source.as_str())
        .bind(rows.seq)
        .bind(g.iter().map(|r| r.idx).collect::<Vec<_>>())
        .bind(g.iter().map(|r| r.node.as_str()).collect::<Vec<_>>())
        .bind(g.iter().map(|r| r.from_ms).collect::<Vec<_>>())
        .bind(g.iter().map(|r| r.to_ms).collect::<Vec<_>>())
        .bind(g.iter().map(|r| r.lost).collect::<Vec<_>>())
        .bind(g.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>())
        .bind(stored_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected())
}

#[async_trait]
impl AuditStore for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn write_batches(
        &self,
        batches: &[DecisionBatch],
        stored_at_ms: i64,
    ) -> Result<Vec<WriteOutcome>, AuditError> {
        let all = batches.iter().map(flatten).collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(all.len());
        for rows in &all {
            let mut out = WriteOutcome::default();
            if !rows.decisions.is_empty() {
                out.decisions = insert_decisions(&mut tx, rows, stored_at_ms).await?;
                out.duplicates += rows.decisions.len() as u64 - out.decisions;
            }
            if !rows.gaps.is_empty() {
                out.gaps = insert_gaps(&mut tx, rows, stored_at_ms).await?;
                out.duplicates += rows.gaps.len() as u64 - out.gaps;
            }
            outcomes.push(out);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn decisions(&self, filter: &DecisionFilter) -> Result<Vec<StoredDecision>, AuditError> {
        let built = filter.build(Placeholders::Dollar)?;
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
            "SELECT * FROM gaps WHERE to_ms >= $1 ORDER BY to_ms DESC, id DESC LIMIT $2",
        )
        .bind(since_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn recent_denies(&self, limit: u32) -> Result<Vec<StoredDecision>, AuditError> {
        Ok(sqlx::query_as("SELECT * FROM recent_denies LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn top_talkers(&self, limit: u32) -> Result<Vec<TopTalker>, AuditError> {
        Ok(sqlx::query_as("SELECT * FROM top_talkers LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn traffic_per_policy(&self, limit: u32) -> Result<Vec<PolicyTraffic>, AuditError> {
        Ok(sqlx::query_as("SELECT * FROM traffic_per_policy LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn denied_counts_since(&self, since_ms: i64) -> Result<Vec<DeniedCount>, AuditError> {
        let rows = sqlx::query_as(
            "SELECT direction, src_namespace, dst_namespace, policy, isolated_by, \
             CAST(SUM(count) AS BIGINT) FROM decisions \
             WHERE verdict = 'deny' AND last_seen_ms >= $1 \
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
             WHERE last_seen_ms < $1 ORDER BY last_seen_ms LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(i64::from(chunk))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn delete_gaps_before(&self, cutoff_ms: i64, chunk: u32) -> Result<u64, AuditError> {
        Ok(sqlx::query(
            "DELETE FROM gaps WHERE id IN (SELECT id FROM gaps \
             WHERE to_ms < $1 ORDER BY to_ms LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(i64::from(chunk))
        .execute(&self.pool)
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
        Ok(None)
    }

    async fn delete_oldest_decisions(&self, n: u32) -> Result<u64, AuditError> {
        Ok(sqlx::query(
            "DELETE FROM decisions WHERE id IN (SELECT id FROM decisions \
             ORDER BY last_seen_ms LIMIT $1)",
        )
        .bind(i64::from(n))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
