//! The audit store's figures (not part of CI; `cargo bench -p palisade-audit --bench ingest`):
//!
//! 1. sustained ingest through `write_batch` (batches of 1,000 decisions, one after the
//!    other, as the operator's ingest task writes them) into SQLite and into PostgreSQL,
//!    on a fresh database and on one that already holds the bulk rows;
//! 2. "denied flows into namespace X in the last hour" over `BENCH_ROWS` rows (default 10
//!    million) generated in bulk by SQL (`WITH RECURSIVE` / `generate_series`), not
//!    through the ingest path: the rows span 7 days, 100 namespaces, a third denied.
//!
//! `SQLITE_INGEST_ONLY=1` stops after SQLite's fresh-database ingest (a quick check).
//!
//! PostgreSQL is the throwaway server of `pg_harness` (PostgreSQL 15, fsync off, commits
//! synchronous). SQLite is a WAL file with `synchronous = FULL`, on the temp folder's disk.

use std::time::{Duration, Instant};

use palisade_audit::pg_harness::PgServer;
use palisade_audit::{now_ms, postgres::PgStore, sqlite::SqliteStore, AuditStore, DecisionFilter};
use palisade_wire::audit::{AuditDirection, Decision, DecisionBatch, Endpoint, Verdict};

const BATCH: usize = 1_000;
const HOUR: i64 = 3_600_000;

fn batch(seq: u64, now: i64) -> DecisionBatch {
    let decisions = (0..BATCH)
        .map(|i| {
            let n = seq as usize * BATCH + i;
            Decision {
                first_seen_ms: now - 500,
                last_seen_ms: now,
                count: 1 + (n % 5) as u64,
                node: format!("node-{}", n % 50),
                direction: if n.is_multiple_of(2) {
                    AuditDirection::Ingress
                } else {
                    AuditDirection::Egress
                },
                verdict: if n.is_multiple_of(3) {
                    Verdict::Deny
                } else {
                    Verdict::Allow
                },
                protocol: "tcp".into(),
                src_ip: format!("10.0.{}.{}", n % 250, n % 200).parse().expect("ip"),
                src_port: Some(30_000 + (n % 30_000) as u16),
                dst_ip: format!("10.1.{}.{}", n % 250, n % 200).parse().expect("ip"),
                dst_port: Some(80),
                src: Some(Endpoint {
                    namespace: format!("ns-{}", n % 100),
                    pod: format!("pod-{}", n % 1000),
                }),
                dst: Some(Endpoint {
                    namespace: format!("ns-{}", n * 7 % 100),
                    pod: format!("pod-{}", n * 13 % 1000),
                }),
                rule_id: "P1a2b3cR0I".into(),
                tier: "networkpolicy".into(),
                policy: (!n.is_multiple_of(3))
                    .then(|| format!("NetworkPolicy ns-{}/allow", n * 7 % 100)),
                rule_index: (!n.is_multiple_of(3)).then_some(0),
                rule_name: None,
                isolated_by: if n.is_multiple_of(3) {
                    vec![format!("NetworkPolicy ns-{}/deny", n * 7 % 100)]
                } else {
                    vec![]
                },
            }
        })
        .collect();
    DecisionBatch {
        source: "bench/ingest".into(),
        seq,
        decisions,
        gaps: vec![],
    }
}

/// Writes `batches` batches; returns decisions per second.
async fn ingest(store: &dyn AuditStore, first_seq: u64, batches: u64) -> f64 {
    let now = now_ms();
    let prepared: Vec<DecisionBatch> = (first_seq..first_seq + batches)
        .map(|s| batch(s, now))
        .collect();
    let start = Instant::now();
    for b in &prepared {
        store.write_batch(b, now).await.expect("write");
    }
    (batches as f64 * BATCH as f64) / start.elapsed().as_secs_f64()
}

/// Batches the operator's ingest writes in one transaction when they queue up (sustained
/// load): 20 batches of 1,000, its `GROUP_DECISIONS`.
const GROUP: usize = 20;

/// Writes `batches` batches as the ingest does under sustained load (group commit);
/// returns decisions per second.
async fn ingest_grouped(store: &dyn AuditStore, first_seq: u64, batches: u64) -> f64 {
    let now = now_ms();
    let prepared: Vec<DecisionBatch> = (first_seq..first_seq + batches)
        .map(|s| batch(s, now))
        .collect();
    let start = Instant::now();
    for group in prepared.chunks(GROUP) {
        store.write_batches(group, now).await.expect("write");
    }
    (batches as f64 * BATCH as f64) / start.elapsed().as_secs_f64()
}

/// Rows generated per statement (one transaction each, so the WAL stays small).
const CHUNK: i64 = 1_000_000;

/// The schema as migration 1 leaves it (indexes come with migration 2).
fn version_1(full: &sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(full.migrations[..1].to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    }
}

/// Rows `?1 < x <= ?2`, stored at `?3`.
const SQLITE_BULK: &str =
    "WITH RECURSIVE c(x) AS (SELECT ?1 + 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?2)
INSERT INTO decisions (source, seq, idx, first_seen_ms, last_seen_ms, count, node, direction,
  verdict, protocol, src_ip, src_port, dst_ip, dst_port, src_namespace, src_pod, dst_namespace,
  dst_pod, rule_id, tier, policy, rule_index, rule_name, isolated_by, stored_at_ms)
SELECT 'bulk/' || (x % 50), x / 1000, x % 1000, ?3 - (x * 7919 % 604800000) - 100,
  ?3 - (x * 7919 % 604800000), 1, 'node-' || (x % 50),
  CASE WHEN x % 2 = 0 THEN 'ingress' ELSE 'egress' END,
  CASE WHEN x % 3 = 0 THEN 'deny' ELSE 'allow' END, 'tcp',
  '10.0.' || (x % 250) || '.' || (x % 200), 30000 + x % 30000,
  '10.1.' || (x * 7 % 250) || '.' || (x % 200), 80,
  'ns-' || (x % 100), 'pod-' || (x % 1000), 'ns-' || (x * 7 % 100), 'pod-' || (x * 13 % 1000),
  'P1a2b3cR0I', 'networkpolicy',
  CASE WHEN x % 3 = 0 THEN NULL ELSE 'NetworkPolicy ns-' || (x * 7 % 100) || '/allow' END,
  NULL, NULL,
  CASE WHEN x % 3 = 0 THEN '[\"NetworkPolicy ns-' || (x * 7 % 100) || '/deny\"]' ELSE '[]' END,
  ?3
FROM c";

const PG_BULK: &str = "INSERT INTO decisions (source, seq, idx, first_seen_ms, last_seen_ms, count,
  node, direction, verdict, protocol, src_ip, src_port, dst_ip, dst_port, src_namespace, src_pod,
  dst_namespace, dst_pod, rule_id, tier, policy, rule_index, rule_name, isolated_by, stored_at_ms)
SELECT 'bulk/' || (x % 50), x / 1000, x % 1000, $3 - (x * 7919 % 604800000) - 100,
  $3 - (x * 7919 % 604800000), 1, 'node-' || (x % 50),
  CASE WHEN x % 2 = 0 THEN 'ingress' ELSE 'egress' END,
  CASE WHEN x % 3 = 0 THEN 'deny' ELSE 'allow' END, 'tcp',
  '10.0.' || (x % 250) || '.' || (x % 200), 30000 + x % 30000,
  '10.1.' || (x * 7 % 250) || '.' || (x % 200), 80,
  'ns-' || (x % 100), 'pod-' || (x % 1000), 'ns-' || (x * 7 % 100), 'pod-' || (x * 13 % 1000),
  'P1a2b3cR0I', 'networkpolicy',
  CASE WHEN x % 3 = 0 THEN NULL ELSE 'NetworkPolicy ns-' || (x * 7 % 100) || '/allow' END,
  NULL, NULL,
  CASE WHEN x % 3 = 0 THEN '[\"NetworkPolicy ns-' || (x * 7 % 100) || '/deny\"]' ELSE '[]' END,
  $3
FROM generate_series($1::bigint + 1, $2::bigint) AS x";

/// The question, through the query builder: (median, max) latency and the rows found.
async fn denied_into(store: &dyn AuditStore, runs: usize) -> (Duration, Duration, usize) {
    let mut times = Vec::new();
    let mut found = 0;
    for i in 0..runs {
        let filter = DecisionFilter {
            dst_namespace: Some(format!("ns-{}", 10 + i % 20)),
            verdict: Some(Verdict::Deny),
            since_ms: Some(now_ms() - HOUR),
            limit: Some(10_000),
            ..Default::default()
        };
        let start = Instant::now();
        let rows = store.decisions(&filter).await.expect("query");
        times.push(start.elapsed());
        found += rows.len();
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1], found / runs)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: i64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir().expect("tempdir");

    // SQLite: ingest into a fresh database; the question over a second one loaded in bulk
    // (version 1 schema, rows in chunks of a million, then migrated: the indexes built once).
    let fresh = format!("sqlite://{}/fresh.db", dir.path().display());
    let sqlite = SqliteStore::open(&fresh).await.expect("sqlite");
    ingest(&sqlite, 0, 5).await; // warm-up
    let rate = ingest(&sqlite, 5, 200).await;
    println!("sqlite ingest, fresh database: {rate:.0} decisions/s (200 batches of {BATCH}, one transaction each)");
    let rate = ingest_grouped(&sqlite, 205, 400).await;
    println!("sqlite ingest, sustained (groups of {GROUP} batches per transaction): {rate:.0} decisions/s (400 batches of {BATCH})");
    sqlite.close().await;
    if std::env::var_os("SQLITE_INGEST_ONLY").is_some() {
        return;
    }
    let big = format!("sqlite://{}/big.db", dir.path().display());
    let sqlite = SqliteStore::open_unmigrated(&big).await.expect("sqlite");
    version_1(&palisade_audit::sqlite::MIGRATOR)
        .run(sqlite.pool())
        .await
        .expect("v1");
    let start = Instant::now();
    let now = now_ms();
    for chunk in 0..(rows + CHUNK - 1) / CHUNK {
        sqlx::query(SQLITE_BULK)
            .bind(chunk * CHUNK)
            .bind(((chunk + 1) * CHUNK).min(rows))
            .bind(now)
            .execute(sqlite.pool())
            .await
            .expect("bulk");
    }
    let loaded = start.elapsed();
    sqlite.close().await;
    let start = Instant::now();
    let sqlite = SqliteStore::open(&big).await.expect("migrate");
    sqlx::query("ANALYZE")
        .execute(sqlite.pool())
        .await
        .expect("analyze");
    println!(
        "sqlite bulk load of {rows} rows: {:.1} s, then indexes and views (migrations 2 to 4): {:.1} s",
        loaded.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    let (median, max, found) = denied_into(&sqlite, 40).await;
    println!(
        "sqlite denied into one namespace, last hour, over {rows} rows: median {:.2} ms, max {:.2} ms ({found} rows per answer)",
        ms(median),
        ms(max)
    );
    let rate = ingest(&sqlite, 1_000, 100).await;
    println!("sqlite ingest with {rows} rows stored: {rate:.0} decisions/s");
    let rate = ingest_grouped(&sqlite, 1_100, 200).await;
    println!("sqlite ingest with {rows} rows stored, grouped: {rate:.0} decisions/s");
    sqlite.close().await;
    // The SQLite files go before PostgreSQL fills its own (a tmpfs holds both in memory).
    drop(dir);

    // PostgreSQL: the same, the bulk rows in a second database.
    let pg = PgServer::start_new().expect("postgres");
    let store = PgStore::open(&pg.url()).await.expect("postgres store");
    ingest(&store, 0, 5).await;
    let rate = ingest(&store, 5, 200).await;
    println!("postgres ingest, fresh database: {rate:.0} decisions/s (200 batches of {BATCH}, one transaction each)");
    let rate = ingest_grouped(&store, 205, 400).await;
    println!("postgres ingest, sustained (groups of {GROUP} batches per transaction): {rate:.0} decisions/s (400 batches of {BATCH})");
    sqlx::query("CREATE DATABASE big")
        .execute(store.pool())
        .await
        .expect("create database");
    store.close().await;
    let store = PgStore::open_unmigrated(&pg.url_for("big"))
        .await
        .expect("big");
    version_1(&palisade_audit::postgres::MIGRATOR)
        .run(store.pool())
        .await
        .expect("v1");
    let start = Instant::now();
    let now = now_ms();
    for chunk in 0..(rows + CHUNK - 1) / CHUNK {
        sqlx::query(PG_BULK)
            .bind(chunk * CHUNK)
            .bind(((chunk + 1) * CHUNK).min(rows))
            .bind(now)
            .execute(store.pool())
            .await
            .expect("bulk");
    }
    let loaded = start.elapsed();
    store.close().await;
    let start = Instant::now();
    let store = PgStore::open(&pg.url_for("big")).await.expect("migrate");
    sqlx::query("VACUUM ANALYZE decisions")
        .execute(store.pool())
        .await
        .expect("analyze");
    println!(
        "postgres bulk load of {rows} rows: {:.1} s, then indexes and views (migrations 2 to 4): {:.1} s",
        loaded.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    let (median, max, found) = denied_into(&store, 40).await;
    println!(
        "postgres denied into one namespace, last hour, over {rows} rows: median {:.2} ms, max {:.2} ms ({found} rows per answer)",
        ms(median),
        ms(max)
    );
    let rate = ingest_grouped(&store, 1_100, 200).await;
    println!("postgres ingest with {rows} rows stored, grouped: {rate:.0} decisions/s");
    let rate = ingest(&store, 1_000, 100).await;
    println!("postgres ingest with {rows} rows stored: {rate:.0} decisions/s");
    store.close().await;
}
