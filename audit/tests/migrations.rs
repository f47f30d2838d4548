//! Forward-only migrations, from an empty database and from version 1 with rows in it,
//! on both backends.

use std::borrow::Cow;

use palisade_audit::pg_harness::PgServer;
use palisade_audit::{now_ms, postgres, sqlite, AuditStore, DecisionFilter};
use sqlx::migrate::Migrator;

/// The first `n` migrations of `full`: the schema as version `n` shipped it.
fn version(full: &Migrator, n: usize) -> Migrator {
    Migrator {
        migrations: Cow::Owned(full.migrations[..n].to_vec()),
        ..Migrator::DEFAULT
    }
}

/// The versions an existing database may be at (every earlier one).
const EARLIER: [usize; 3] = [1, 2, 3];

const V1_ROW: &str = "INSERT INTO decisions (source, seq, idx, first_seen_ms, last_seen_ms, \
    count, node, direction, verdict, protocol, src_ip, src_port, dst_ip, dst_port, \
    src_namespace, src_pod, dst_namespace, dst_pod, rule_id, tier, policy, rule_index, \
    rule_name, isolated_by, stored_at_ms) VALUES ('old/1', 1, 0, {T}, {T}, 4, 'n1', 'ingress', \
    'deny', 'tcp', '10.0.0.1', 1234, '10.0.0.2', 80, 'a', 'p', 'b', 'q', 'P1R0I', \
    'networkpolicy', NULL, NULL, NULL, '[\"NetworkPolicy b/deny\"]', {T})";

const INDEXES: [&str; 4] = [
    "decisions_last_seen",
    "decisions_dst_ns",
    "decisions_src_ns",
    "decisions_verdict",
];

/// Indexes of version 2 that version 3 replaced, and the unused one version 4 dropped.
const DROPPED: [&str; 4] = [
    "decisions_dst_pod",
    "decisions_src_pod",
    "decisions_dst_verdict",
    "decisions_policy",
];

/// What the latest schema must have, and the v1 row read through it.
async fn check_latest(
    store: &dyn AuditStore,
    indexes: Vec<String>,
    applied: Vec<i64>,
    rows: usize,
) {
    assert_eq!(applied, vec![1, 2, 3, 4]);
    for name in INDEXES {
        assert!(
            indexes.iter().any(|i| i == name),
            "index {name} missing: {indexes:?}"
        );
    }
    for name in DROPPED {
        assert!(
            !indexes.iter().any(|i| i == name),
            "index {name} left: {indexes:?}"
        );
    }
    let found = store
        .decisions(&DecisionFilter {
            dst_namespace: Some("b".into()),
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(found.len(), rows);
    let denies = store.recent_denies(10).await.expect("view");
    assert_eq!(denies.len(), rows);
    if rows > 0 {
        assert_eq!(found[0].isolated_by.0, vec!["NetworkPolicy b/deny"]);
    }
}

async fn sqlite_state(store: &sqlite::SqliteStore) -> (Vec<String>, Vec<i64>) {
    let idx: Vec<(String,)> = sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'index'")
        .fetch_all(store.pool())
        .await
        .expect("indexes");
    let applied: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(store.pool())
            .await
            .expect("versions");
    (
        idx.into_iter().map(|r| r.0).collect(),
        applied.into_iter().map(|r| r.0).collect(),
    )
}

async fn pg_state(store: &postgres::PgStore) -> (Vec<String>, Vec<i64>) {
    let idx: Vec<(String,)> = sqlx::query_as("SELECT indexname::text FROM pg_indexes")
        .fetch_all(store.pool())
        .await
        .expect("indexes");
    let applied: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(store.pool())
            .await
            .expect("versions");
    (
        idx.into_iter().map(|r| r.0).collect(),
        applied.into_iter().map(|r| r.0).collect(),
    )
}

#[tokio::test]
async fn sqlite_from_empty_and_from_every_earlier_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = format!("sqlite://{}/empty.db", dir.path().display());
    let store = sqlite::SqliteStore::open(&empty).await.expect("open empty");
    let (idx, applied) = sqlite_state(&store).await;
    check_latest(&store, idx, applied, 0).await;
    // Opening again applies nothing and fails nothing.
    store.close().await;
    let store = sqlite::SqliteStore::open(&empty).await.expect("reopen");
    store.close().await;

    for n in EARLIER {
        let old = format!("sqlite://{}/v{n}.db", dir.path().display());
        let before = sqlite::SqliteStore::open_unmigrated(&old)
            .await
            .expect("open old");
        version(&sqlite::MIGRATOR, n)
            .run(before.pool())
            .await
            .expect("old schema");
        sqlx::query(&V1_ROW.replace("{T}", &now_ms().to_string()))
            .execute(before.pool())
            .await
            .expect("old row");
        before.close().await;
        let store = sqlite::SqliteStore::open(&old).await.expect("upgrade");
        let (idx, applied) = sqlite_state(&store).await;
        check_latest(&store, idx, applied, 1).await;
        store.close().await;
    }
}

#[tokio::test]
async fn postgres_from_empty_and_from_every_earlier_version() {
    let pg = PgServer::start_new().expect("postgres starts");
    let admin = postgres::PgStore::open_unmigrated(&pg.url())
        .await
        .expect("connect");
    for db in ["empty", "v1", "v2", "v3"] {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(admin.pool())
            .await
            .expect("create database");
    }
    let store = postgres::PgStore::open(&pg.url_for("empty"))
        .await
        .expect("open empty");
    let (idx, applied) = pg_state(&store).await;
    check_latest(&store, idx, applied, 0).await;
    store.close().await;

    for n in EARLIER {
        let db = format!("v{n}");
        let before = postgres::PgStore::open_unmigrated(&pg.url_for(&db))
            .await
            .expect("open old");
        version(&postgres::MIGRATOR, n)
            .run(before.pool())
            .await
            .expect("old schema");
        sqlx::query(&V1_ROW.replace("{T}", &now_ms().to_string()))
            .execute(before.pool())
            .await
            .expect("old row");
        before.close().await;
        let store = postgres::PgStore::open(&pg.url_for(&db))
            .await
            .expect("upgrade");
        let (idx, applied) = pg_state(&store).await;
        check_latest(&store, idx, applied, 1).await;
        store.close().await;
    }
}

/// Readers (the CLI) never create or migrate: a missing file and an old schema are errors.
#[tokio::test]
async fn readers_open_only_a_migrated_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.db");
    let err = palisade_audit::open_existing(&format!("sqlite://{}", missing.display()))
        .await
        .err()
        .expect("missing file refused");
    assert!(!missing.exists(), "no file created ({err})");
    let old = format!("sqlite://{}/v1.db", dir.path().display());
    let v1 = sqlite::SqliteStore::open_unmigrated(&old)
        .await
        .expect("open v1");
    version(&sqlite::MIGRATOR, 1)
        .run(v1.pool())
        .await
        .expect("v1 schema");
    v1.close().await;
    let err = palisade_audit::open_existing(&old)
        .await
        .err()
        .expect("old schema refused");
    assert!(err.to_string().contains("schema version 1, not 4"), "{err}");
    sqlite::SqliteStore::open(&old)
        .await
        .expect("migrate")
        .close()
        .await;
    palisade_audit::open_existing(&old)
        .await
        .expect("migrated database opens");
}
