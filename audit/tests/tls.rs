//! PostgreSQL over TLS: a server that requires it is reached with `sslmode=require` and
//! with the server verified (`verify-full` against its CA); a server without TLS refuses a
//! client that requires it.

mod common;

use common::*;
use palisade_audit::pg_harness::PgServer;
use palisade_audit::{now_ms, postgres::PgStore, AuditStore};
use palisade_wire::audit::{AuditDirection, Verdict};

#[tokio::test]
async fn postgres_over_tls() {
    let server = PgServer::start_new().expect("postgres");
    let require = format!("{}?sslmode=require", server.url());
    let err = PgStore::open(&require)
        .await
        .err()
        .expect("a server without TLS refuses a client that requires it");
    assert!(
        err.to_string().to_lowercase().contains("tls")
            || err.to_string().to_lowercase().contains("ssl"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("without TLS support"),
        "the client is built with TLS: {err}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = palisade_wire::pki::write(dir.path(), &["127.0.0.1", "localhost"]).expect("pki");
    server.enable_tls(&pki.cert, &pki.key).expect("tls on");
    let store = PgStore::open(&require).await.expect("sslmode=require");
    store.close().await;
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        server.url(),
        pki.ca.display()
    );
    let store = PgStore::open(&verified).await.expect("verify-full");
    let now = now_ms();
    let batch = mk_batch(
        "tls/1",
        1,
        vec![mk_decision(
            ep("a", "p"),
            ep("b", "q"),
            Verdict::Allow,
            AuditDirection::Ingress,
            now,
        )],
    );
    let out = store
        .write_batch(&batch, now)
        .await
        .expect("write over TLS");
    assert_eq!(out.decisions, 1);
    store.close().await;
}
