//! The store against a real SQLite file and a real PostgreSQL server started here: the same
//! checks on both backends.

mod common;

use common::*;
use palisade_audit::pg_harness::PgServer;
use palisade_audit::{
    now_ms, postgres::PgStore, prune, sqlite::SqliteStore, AuditError, AuditStore, DecisionFilter,
    Retention,
};
use palisade_wire::audit::{AuditDirection, Verdict};

const HOUR: i64 = 3_600_000;

/// Every behaviour of the store, on one backend.
async fn exercise(store: &dyn AuditStore) {
    idempotent(store).await;
    grouped(store).await;
    filters(store).await;
    hostile_values_find_nothing(store).await;
    views(store).await;
    invalid_batches(store).await;
    retention(store).await;
}

/// The same batch twice is stored once; a batch with the same seq from another source is
/// another batch.
async fn idempotent(store: &dyn AuditStore) {
    let now = now_ms();
    let mut batch = mk_batch(
        "idem/1",
        1,
        vec![
            mk_decision(
                ep("a", "p"),
                ep("b", "q"),
                Verdict::Allow,
                AuditDirection::Ingress,
                now,
            ),
            mk_decision(
                ep("a", "p"),
                ep("b", "q"),
                Verdict::Deny,
                AuditDirection::Egress,
                now,
            ),
        ],
    );
    batch.gaps.push(mk_gap(now, 3));
    let first = store.write_batch(&batch, now).await.expect("first write");
    assert_eq!((first.decisions, first.gaps, first.duplicates), (2, 1, 0));
    let again = store.write_batch(&batch, now).await.expect("second write");
    assert_eq!((again.decisions, again.gaps, again.duplicates), (0, 0, 3));
    let mut other = batch.clone();
    other.source = "idem/2".into();
    let other = store.write_batch(&other, now).await.expect("other source");
    assert_eq!(other.decisions, 2);
    let rows = store
        .decisions(&DecisionFilter {
            namespace: Some("a".into()),
            limit: Some(100),
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(rows.len(), 4);
    let gaps = store.gaps(0, 10).await.expect("gaps");
    assert_eq!(gaps.len(), 2);
    assert_eq!(gaps[0].lost, 3);
}

/// Each filter narrows to exactly the rows it names.
async fn filters(store: &dyn AuditStore) {
    let now = now_ms();
    let mut deny_isolated = mk_decision(
        None,
        ep("prod", "web"),
        Verdict::Deny,
        AuditDirection::Ingress,
        now - 10,
    );
    deny_isolated.isolated_by = vec!["NetworkPolicy prod/deny-all".into()];
    deny_isolated.src_ip = "192.0.2.9".parse().expect("ip");
    let mut allow_rule = mk_decision(
        ep("dev", "curl"),
        ep("prod", "web"),
        Verdict::Allow,
        AuditDirection::Ingress,
        now - 20,
    );
    allow_rule.policy = Some("NetworkPolicy prod/allow-dev".into());
    allow_rule.rule_index = Some(0);
    allow_rule.rule_name = Some("from-dev".into());
    let mut old_egress = mk_decision(
        ep("prod", "web"),
        ep("dev", "db"),
        Verdict::Deny,
        AuditDirection::Egress,
        now - 3 * HOUR,
    );
    old_egress.tier = "admin".into();
    old_egress.policy = Some("AdminNetworkPolicy lockdown".into());
    store
        .write_batch(
            &mk_batch("filters/1", 1, vec![deny_isolated, allow_rule, old_egress]),
            now,
        )
        .await
        .expect("write");
    let ids = |f: DecisionFilter| async move {
        let rows = store.decisions(&f).await.expect("query");
        let mut out: Vec<String> = rows
            .iter()
            .filter(|r| r.source == "filters/1")
            .map(|r| format!("{}>{}", r.src_endpoint(), r.dst_endpoint()))
            .collect();
        out.sort();
        out
    };
    let base = DecisionFilter {
        limit: Some(1000),
        ..Default::default()
    };
    assert_eq!(
        ids(DecisionFilter {
            namespace: Some("prod".into()),
            pod: Some("web".into()),
            ..base.clone()
        })
        .await,
        vec!["192.0.2.9>prod/web", "dev/curl>prod/web", "prod/web>dev/db"]
    );
    assert_eq!(
        ids(DecisionFilter {
            src_namespace: Some("dev".into()),
            ..base.clone()
        })
        .await,
        vec!["dev/curl>prod/web"]
    );
    assert_eq!(
        ids(DecisionFilter {
            dst_namespace: Some("dev".into()),
            dst_pod: Some("db".into()),
            ..base.clone()
        })
        .await,
        vec!["prod/web>dev/db"]
    );
    assert_eq!(
        ids(DecisionFilter {
            dst_namespace: Some("prod".into()),
            verdict: Some(Verdict::Deny),
            ..base.clone()
        })
        .await,
        vec!["192.0.2.9>prod/web"]
    );
    assert_eq!(
        ids(DecisionFilter {
            direction: Some(AuditDirection::Egress),
            namespace: Some("prod".into()),
            ..base.clone()
        })
        .await,
        vec!["prod/web>dev/db"]
    );
    // A policy matches the rule that decided and the isolation that denied.
    assert_eq!(
        ids(DecisionFilter {
            policy: Some("NetworkPolicy prod/deny-all".into()),
            ..base.clone()
        })
        .await,
        vec!["192.0.2.9>prod/web"]
    );
    assert_eq!(
        ids(DecisionFilter {
            policy: Some("NetworkPolicy prod/allow-dev".into()),
            ..base.clone()
        })
        .await,
        vec!["dev/curl>prod/web"]
    );
    assert_eq!(
        ids(DecisionFilter {
            tier: Some("admin".into()),
            ..base.clone()
        })
        .await,
        vec!["prod/web>dev/db"]
    );
    // The last hour: the three-hour-old decision is out; an hour ending 2 h ago has only it.
    assert_eq!(
        ids(DecisionFilter {
            namespace: Some("prod".into()),
            since_ms: Some(now - HOUR),
            ..base.clone()
        })
        .await
        .len(),
        2
    );
    assert_eq!(
        ids(DecisionFilter {
            namespace: Some("prod".into()),
            since_ms: Some(now - 4 * HOUR),
            until_ms: Some(now - 2 * HOUR),
            ..base.clone()
        })
        .await,
        vec!["prod/web>dev/db"]
    );
    // Newest first, limited; follow mode: oldest first after an id.
    let newest = store
        .decisions(&DecisionFilter {
            namespace: Some("prod".into()),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].src_ip, "192.0.2.9");
    assert_eq!(newest[0].isolated_by.0, vec!["NetworkPolicy prod/deny-all"]);
    let first_id = newest[0].id - 1;
    let after = store
        .decisions(&DecisionFilter {
            after_id: Some(first_id - 1),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .expect("follow");
    assert_eq!(after.len(), 2);
    assert!(after[0].id < after[1].id);
    assert_eq!(after[0].id, first_id);
}

/// Filter values are bound parameters: SQL in them matches nothing and breaks nothing.
async fn hostile_values_find_nothing(store: &dyn AuditStore) {
    for hostile in ["' OR 1=1 --", "x\" OR \"1\"=\"1", "%", "_"] {
        for f in [
            DecisionFilter {
                namespace: Some(hostile.into()),
                ..Default::default()
            },
            DecisionFilter {
                pod: Some(hostile.into()),
                ..Default::default()
            },
            DecisionFilter {
                policy: Some(hostile.into()),
                ..Default::default()
            },
            DecisionFilter {
                tier: Some(hostile.into()),
                ..Default::default()
            },
            DecisionFilter {
                dst_namespace: Some(hostile.into()),
                ..Default::default()
            },
        ] {
            let rows = store.decisions(&f).await.expect("query");
            assert!(rows.is_empty(), "{hostile:?} found {} rows", rows.len());
        }
    }
}

async fn views(store: &dyn AuditStore) {
    let now = now_ms();
    let mut decisions = Vec::new();
    for i in 0..5 {
        let mut d = mk_decision(
            ep("views", "client"),
            ep("views", "server"),
            Verdict::Allow,
            AuditDirection::Ingress,
            now - i,
        );
        d.count = 10;
        d.policy = Some("NetworkPolicy views/allow".into());
        decisions.push(d);
    }
    let mut denied = mk_decision(
        ep("views", "client"),
        ep("views", "vault"),
        Verdict::Deny,
        AuditDirection::Ingress,
        now,
    );
    denied.count = 7;
    denied.isolated_by = vec!["NetworkPolicy views/vault".into()];
    decisions.push(denied);
    let mut stale = mk_decision(
        ep("views", "client"),
        ep("views", "vault"),
        Verdict::Deny,
        AuditDirection::Ingress,
        now - 48 * HOUR,
    );
    stale.isolated_by = vec!["NetworkPolicy views/vault".into()];
    decisions.push(stale);
    store
        .write_batch(&mk_batch("views/1", 1, decisions), now)
        .await
        .expect("write");

    let denies = store.recent_denies(1000).await.expect("recent_denies");
    let ours: Vec<_> = denies.iter().filter(|d| d.source == "views/1").collect();
    assert_eq!(ours.len(), 1, "only the denial of the last 24 h");
    assert_eq!(ours[0].dst_pod.as_deref(), Some("vault"));
    assert!(denies.iter().all(|d| d.verdict == "deny"));

    let talkers = store.top_talkers(1000).await.expect("top_talkers");
    let pair = talkers
        .iter()
        .find(|t| t.source == "views/client" && t.destination == "views/server")
        .expect("pair listed");
    assert_eq!((pair.connections, pair.denied), (50, 0));
    let vault = talkers
        .iter()
        .find(|t| t.destination == "views/vault")
        .expect("denied pair listed");
    assert_eq!((vault.connections, vault.denied), (7, 7));
    assert!(talkers
        .windows(2)
        .all(|w| w[0].connections >= w[1].connections));

    let per_policy = store
        .traffic_per_policy(1000)
        .await
        .expect("traffic_per_policy");
    let allow = per_policy
        .iter()
        .find(|p| p.policy == "NetworkPolicy views/allow")
        .expect("policy listed");
    assert_eq!((allow.decisions, allow.connections), (5, 50));
    assert_eq!(allow.verdict, "allow");

    let counts = store
        .denied_counts_since(now - HOUR)
        .await
        .expect("denied counts");
    let vault = counts
        .iter()
        .find(|c| c.policy == "NetworkPolicy views/vault")
        .expect("isolating policy counted");
    assert_eq!((vault.namespace.as_str(), vault.count), ("views", 7));
}

/// Bad input: a clear, non-transient error, and nothing of the batch stored.
async fn invalid_batches(store: &dyn AuditStore) {
    let now = now_ms();
    let good = mk_decision(
        ep("inv", "a"),
        ep("inv", "b"),
        Verdict::Allow,
        AuditDirection::Ingress,
        now,
    );
    let mut bad = good.clone();
    bad.tier = "tier\0".into();
    let err = store
        .write_batch(&mk_batch("inv/1", 1, vec![good.clone(), bad]), now)
        .await
        .expect_err("NUL refused");
    assert!(matches!(err, AuditError::InvalidBatch { .. }), "{err}");
    assert!(!err.is_transient());
    assert!(
        err.to_string().contains("decision 1: tier contains a NUL"),
        "{err}"
    );
    let mut huge = good.clone();
    huge.count = u64::MAX;
    let err = store
        .write_batch(&mk_batch("inv/1", 2, vec![huge]), now)
        .await
        .expect_err("count over i64");
    assert!(err.to_string().contains("count"), "{err}");
    let err = store
        .write_batch(&mk_batch("inv/1", u64::MAX, vec![good]), now)
        .await
        .expect_err("seq over i64");
    assert!(err.to_string().contains("seq"), "{err}");
    let rows = store
        .decisions(&DecisionFilter {
            namespace: Some("inv".into()),
            ..Default::default()
        })
        .await
        .expect("query");
    assert!(rows.is_empty());
}

/// Several batches in one transaction: one outcome each, duplicates skipped per batch; a
/// group with one invalid batch stores nothing at all.
async fn grouped(store: &dyn AuditStore) {
    let now = now_ms();
    let d = |pod: &str| {
        mk_decision(
            ep("grp", pod),
            ep("grp", "web"),
            Verdict::Allow,
            AuditDirection::Ingress,
            now,
        )
    };
    let first = mk_batch("grp/1", 1, vec![d("a"), d("b")]);
    store.write_batch(&first, now).await.expect("first alone");
    let second = mk_batch("grp/1", 2, vec![d("c")]);
    let other = mk_batch("grp/2", 1, vec![d("d"), d("e"), d("f")]);
    let outcomes = store
        .write_batches(&[first.clone(), second.clone(), other.clone()], now)
        .await
        .expect("group");
    let counts: Vec<(u64, u64)> = outcomes
        .iter()
        .map(|o| (o.decisions, o.duplicates))
        .collect();
    assert_eq!(counts, [(0, 2), (1, 0), (3, 0)]);
    let mut bad = d("g");
    bad.tier = "bad\0".into();
    let err = store
        .write_batches(
            &[
                mk_batch("grp/3", 1, vec![d("h")]),
                mk_batch("grp/3", 2, vec![bad]),
            ],
            now,
        )
        .await
        .expect_err("one invalid batch fails the group");
    assert!(!err.is_transient(), "{err}");
    let rows = store
        .decisions(&DecisionFilter {
            namespace: Some("grp".into()),
            ..Default::default()
        })
        .await
        .expect("query");
    let mut pods: Vec<String> = rows.iter().filter_map(|r| r.src_pod.clone()).collect();
    pods.sort();
    assert_eq!(
        pods,
        ["a", "b", "c", "d", "e", "f"],
        "nothing of the failed group"
    );
}

/// By age, then by size, in chunks of the given size.
async fn retention(store: &dyn AuditStore) {
    let now = now_ms();
    // Empty the store of earlier checks' rows.
    prune(
        store,
        now + 100 * HOUR,
        &Retention {
            max_age_ms: Some(0),
            max_rows: None,
            max_bytes: None,
            chunk: 1000,
        },
    )
    .await
    .expect("empty");
    assert_eq!(store.count_decisions().await.expect("count"), 0);
    let mut old = Vec::new();
    let mut fresh = Vec::new();
    for i in 0..25 {
        old.push(mk_decision(
            ep("ret", "a"),
            ep("ret", "b"),
            Verdict::Allow,
            AuditDirection::Ingress,
            now - 10 * HOUR - i,
        ));
        fresh.push(mk_decision(
            ep("ret", "a"),
            ep("ret", "b"),
            Verdict::Allow,
            AuditDirection::Ingress,
            now - i,
        ));
    }
    let mut batch = mk_batch("ret/1", 1, old);
    batch.gaps.push(mk_gap(now - 10 * HOUR, 1));
    store.write_batch(&batch, now).await.expect("write old");
    store
        .write_batch(&mk_batch("ret/1", 2, fresh), now)
        .await
        .expect("write fresh");
    let pruned = prune(
        store,
        now,
        &Retention {
            max_age_ms: Some(HOUR),
            max_rows: Some(20),
            max_bytes: None,
            chunk: 10,
        },
    )
    .await
    .expect("prune");
    assert_eq!(pruned.by_age, 25);
    assert_eq!(pruned.gaps, 1);
    assert_eq!(pruned.by_size, 5);
    // 25 by age in chunks of 10: 3 statements; gaps: 1; 5 by size: 1.
    assert_eq!(pruned.chunks, 5);
    let left = store
        .decisions(&DecisionFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(left.len(), 20);
    // The oldest went first: what is left is the 20 newest.
    assert!(left.iter().all(|d| d.last_seen_ms > now - 20));
}

/// By bytes (SQLite): the oldest rows go until what the database uses fits; PostgreSQL
/// refuses the setting rather than ignoring it.
async fn bytes_retention(store: &dyn AuditStore) {
    let now = now_ms();
    let bytes = |max| Retention {
        max_age_ms: None,
        max_rows: None,
        max_bytes: Some(max),
        chunk: 500,
    };
    if store.backend() == palisade_audit::Backend::Postgres {
        let err = prune(store, now, &bytes(1)).await.expect_err("refused");
        assert!(matches!(err, AuditError::Unsupported(_)), "{err}");
        return;
    }
    prune(
        store,
        now + 100 * HOUR,
        &Retention {
            max_age_ms: Some(0),
            ..bytes(u64::MAX)
        },
    )
    .await
    .expect("empty");
    for seq in 0..20 {
        let decisions = (0..100)
            .map(|i| {
                mk_decision(
                    ep("bytes", &format!("p{i}")),
                    ep("bytes", "web"),
                    Verdict::Allow,
                    AuditDirection::Ingress,
                    now - 3_000 + seq * 100 + i,
                )
            })
            .collect();
        store
            .write_batch(&mk_batch("bytes/1", seq as u64, decisions), now)
            .await
            .expect("write");
    }
    let before = store
        .used_bytes()
        .await
        .expect("size")
        .expect("sqlite measures");
    let same = prune(store, now, &bytes(before)).await.expect("within");
    assert_eq!(same.by_size, 0, "within the limit: nothing deleted");
    let pruned = prune(store, now, &bytes(before / 2)).await.expect("prune");
    assert_eq!(
        pruned.by_size, 1_000,
        "2,000 rows over twice the limit: half go"
    );
    let after = store
        .used_bytes()
        .await
        .expect("size")
        .expect("sqlite measures");
    assert!(after < before, "pages freed: {after} < {before}");
    let left = store
        .decisions(&DecisionFilter {
            namespace: Some("bytes".into()),
            limit: Some(5_000),
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(left.len(), 1_000);
    assert!(
        left.iter().all(|d| d.last_seen_ms >= now - 3_000 + 1_000),
        "the oldest went first"
    );
}

#[tokio::test]
async fn sqlite_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/sub/audit.db", dir.path().display());
    let store = SqliteStore::open(&url).await.expect("open");
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    exercise(&store).await;
    bytes_retention(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_server() {
    let pg = PgServer::start_new().expect("postgres starts");
    let store = PgStore::open(&pg.url()).await.expect("open");
    exercise(&store).await;
    bytes_retention(&store).await;
    store.close().await;
}

#[tokio::test]
async fn open_by_url_and_bad_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = palisade_audit::open(&format!("sqlite://{}/a.db", dir.path().display()))
        .await
        .expect("opens");
    assert_eq!(store.backend(), palisade_audit::Backend::Sqlite);
    let err = palisade_audit::open("mysql://u:pw@h/db")
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("expected sqlite://"), "{err}");
    assert!(!err.to_string().contains("pw"), "{err}");
}

/// A database that cannot be written for a while: writes fail with a transient error and
/// succeed, once, when it is back.
#[tokio::test]
async fn postgres_down_then_back() {
    let pg = PgServer::start_new().expect("postgres starts");
    let store = PgStore::open(&pg.url()).await.expect("open");
    let now = now_ms();
    let batch = mk_batch(
        "down/1",
        1,
        vec![mk_decision(
            ep("d", "a"),
            ep("d", "b"),
            Verdict::Allow,
            AuditDirection::Ingress,
            now,
        )],
    );
    pg.stop().expect("stop");
    let err = store.write_batch(&batch, now).await.expect_err("down");
    assert!(err.is_transient(), "{err}");
    pg.start().expect("start");
    let mut stored = None;
    for _ in 0..50 {
        match store.write_batch(&batch, now).await {
            Ok(o) => {
                stored = Some(o);
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(stored.expect("stored once back").decisions, 1);
    assert_eq!(store.count_decisions().await.expect("count"), 1);
}

#[tokio::test]
async fn sqlite_locked_then_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/a.db", dir.path().display());
    let store = SqliteStore::open(&url).await.expect("open");
    let now = now_ms();
    let batch = mk_batch(
        "lock/1",
        1,
        vec![mk_decision(
            ep("d", "a"),
            ep("d", "b"),
            Verdict::Allow,
            AuditDirection::Ingress,
            now,
        )],
    );
    // Another process's exclusive transaction: our writes time out (busy) until it ends.
    let mut other = SqliteStore::open(&url)
        .await
        .expect("second handle")
        .pool()
        .acquire()
        .await
        .expect("conn");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *other)
        .await
        .expect("lock");
    let err = store.write_batch(&batch, now).await.expect_err("locked");
    assert!(err.is_transient(), "{err}");
    sqlx::query("COMMIT")
        .execute(&mut *other)
        .await
        .expect("unlock");
    assert_eq!(
        store
            .write_batch(&batch, now)
            .await
            .expect("free")
            .decisions,
        1
    );
    assert_eq!(
        store
            .write_batch(&batch, now)
            .await
            .expect("again")
            .decisions,
        0
    );
}
