//! `palisade audit` against a real SQLite audit database.

use std::process::Command;

use palisade_wire::audit::{AuditDirection, Decision, DecisionBatch, Endpoint, Verdict};

fn decision(src: (&str, &str), dst: (&str, &str), verdict: Verdict, age_ms: i64) -> Decision {
    let at = palisade_audit::now_ms() - age_ms;
    let ep = |(ns, pod): (&str, &str)| {
        Some(Endpoint {
            namespace: ns.into(),
            pod: pod.into(),
        })
    };
    Decision {
        first_seen_ms: at,
        last_seen_ms: at,
        count: 2,
        node: "n1".into(),
        direction: AuditDirection::Ingress,
        verdict,
        protocol: "tcp".into(),
        src_ip: "10.0.0.1".parse().expect("ip"),
        src_port: Some(1234),
        dst_ip: "10.0.0.2".parse().expect("ip"),
        dst_port: Some(80),
        src: ep(src),
        dst: ep(dst),
        rule_id: "P1R0I".into(),
        tier: "networkpolicy".into(),
        policy: None,
        rule_index: None,
        rule_name: None,
        isolated_by: vec!["NetworkPolicy prod/deny, all".into()],
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A database with three decisions: one two hours old.
fn database(dir: &std::path::Path) -> String {
    let url = format!("sqlite://{}/audit.db", dir.display());
    runtime().block_on(async {
        let store = palisade_audit::open(&url).await.expect("open");
        store
            .write_batch(
                &DecisionBatch {
                    source: "n1/x".into(),
                    seq: 1,
                    decisions: vec![
                        decision(("dev", "curl"), ("prod", "web"), Verdict::Deny, 0),
                        decision(("dev", "curl"), ("prod", "db"), Verdict::Allow, 10),
                        decision(("dev", "curl"), ("prod", "web"), Verdict::Deny, 7_200_000),
                    ],
                    gaps: vec![],
                },
                palisade_audit::now_ms(),
            )
            .await
            .expect("write");
        store.close().await;
    });
    url
}

fn palisade(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn filters_and_formats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database(dir.path());
    // JSON lines, filtered by destination pod, verdict and time.
    let (code, out, err) = palisade(&[
        "audit",
        "--database",
        &url,
        "--dst-pod",
        "web",
        "--verdict",
        "deny",
        "--since",
        "1h",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["dst_pod"], "web");
    assert_eq!(rows[0]["isolated_by"][0], "NetworkPolicy prod/deny, all");
    // CSV: a header and the rows, oldest first; a comma in a field is quoted.
    let (code, out, _) = palisade(&["audit", "--database", &url, "-n", "prod", "-o", "csv"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("id,first_seen_ms"), "{out}");
    assert!(
        lines[1].contains("\"isolated by NetworkPolicy prod/deny, all\""),
        "{out}"
    );
    // Table, limited to the newest.
    let (code, out, _) = palisade(&["audit", "--database", &url, "--limit", "1"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains("dev/curl") && out.contains("prod/web"),
        "{out}"
    );
}

#[test]
fn hostile_values_find_nothing_and_bad_input_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database(dir.path());
    let (code, out, _) = palisade(&[
        "audit",
        "--database",
        &url,
        "--pod",
        "' OR 1=1 --",
        "-o",
        "json",
    ]);
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, _, err) = palisade(&["audit", "--database", &url, "--verdict", "maybe"]);
    assert_eq!(code, 2);
    assert!(err.contains("verdict \"maybe\""), "{err}");
    let missing = format!("sqlite://{}/nope.db", dir.path().display());
    let (code, _, err) = palisade(&["audit", "--database", &missing]);
    assert_eq!(code, 2);
    assert!(err.contains("nope.db"), "{err}");
    assert!(!dir.path().join("nope.db").exists());
    let (code, _, err) = palisade(&["audit", "--server", "http://x", "--token-file", "/dev/null"]);
    assert_eq!(code, 2);
    assert!(err.contains("empty") || err.contains("https"), "{err}");
}

#[test]
fn follow_prints_what_arrives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database(dir.path());
    let child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "audit",
            "--database",
            &url,
            "--dst-pod",
            "db",
            "-o",
            "json",
            "--follow",
            "--interval-ms",
            "100",
            "--polls",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(500));
    runtime().block_on(async {
        let store = palisade_audit::open(&url).await.expect("open");
        let batch = DecisionBatch {
            source: "n1/x".into(),
            seq: 2,
            decisions: vec![
                decision(("dev", "a"), ("prod", "db"), Verdict::Allow, 0),
                decision(("dev", "a"), ("prod", "web"), Verdict::Allow, 0),
            ],
            gaps: vec![],
        };
        store
            .write_batch(&batch, palisade_audit::now_ms())
            .await
            .expect("write");
    });
    let out = child.wait_with_output().expect("ends");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let pods: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            format!(
                "{}>{}",
                v["src_pod"].as_str().unwrap_or(""),
                v["dst_pod"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(pods, vec!["curl>db", "a>db"], "{text}");
}
