//! The audit log in the lab, end to end: palisade-operator (manifest-directory source, its
//! audit database a SQLite file of the run) and one palisade-enforcer agent per node, real
//! iptables and NFLOG. The walkthrough's step 3 (testweb isolated, only testcurl allowed in)
//! is probed once on port 80; the database must then hold exactly the expected rows: the
//! allowed connection testcurl → testweb with its policy and rule, the denied one
//! other → testweb with the policies that isolate testweb, both pods named on both sides
//! (the remote one filled in by the operator from its index), and nothing else, no gap.
//! Needs root, the three binaries (`cargo build --workspace --bins`) and python3 (its
//! sqlite3 module reads the database as any SQL client would); skipped with a message
//! otherwise.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::scenario;
use e2e::runner::{Options, ScenarioLab};
use serde_json::Value;

fn options() -> Option<Options> {
    let opts = common::operator_options()?;
    if !Command::new("python3")
        .args(["-c", "import sqlite3"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: python3 with sqlite3 is needed to read the audit database");
        return None;
    }
    Some(opts)
}

/// Every decision and gap row of the database, as JSON objects.
fn rows(db: &Path) -> (Vec<Value>, Vec<Value>) {
    let script = r#"
import json, sqlite3, sys
con = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
con.row_factory = sqlite3.Row
def table(name):
    try:
        return [dict(r) for r in con.execute("SELECT * FROM " + name + " ORDER BY id")]
    except sqlite3.OperationalError:
        return []
print(json.dumps({"decisions": table("decisions"), "gaps": table("gaps")}))
"#;
    if !db.exists() {
        return (Vec::new(), Vec::new());
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(db)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "reading {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    (list("decisions"), list("gaps"))
}

/// What a row says, without times, counts and its batch.
fn essence(r: &Value) -> String {
    let f = |k: &str| match &r[k] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // isolated_by is a JSON array (of the tier's policies in evaluation order): compared
    // as a sorted list.
    let mut isolated: Vec<String> = r["isolated_by"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(|t| serde_json::from_str(t).expect("isolated_by is a JSON array"))
        .unwrap_or_default();
    isolated.sort();
    format!(
        "{} {} {} {} {}/{} -> {}/{} :{} tier={} policy={} rule={} isolated_by={:?}",
        f("node"),
        f("direction"),
        f("verdict"),
        f("protocol"),
        f("src_namespace"),
        f("src_pod"),
        f("dst_namespace"),
        f("dst_pod"),
        f("dst_port"),
        f("tier"),
        f("policy"),
        f("rule_index"),
        isolated,
    )
}

#[test]
fn the_walkthrough_produces_exactly_the_expected_audit_rows() {
    let Some(opts) = options() else { return };
    let step3 = scenario("walkthrough-3-allow-testcurl-for-testweb.yaml");
    let mut lab = ScenarioLab::build(&step3.scenario, &opts).expect("lab builds");
    lab.start(&step3, &opts)
        .expect("operator and agents start, step 3 realised");
    let db = lab
        .control
        .as_ref()
        .expect("operator mode")
        .audit_db
        .clone();

    // One probe of every pair on port 80, exactly as `e2e run` does.
    let denied = lab.probe(&step3.scenario, &opts).expect("probes run");
    let denied: Vec<&String> = denied.iter().flatten().collect();
    assert_eq!(
        denied,
        vec!["default/other->default/testweb"],
        "the walkthrough's verdicts"
    );

    // The rows arrive within a window (300 ms) and a commit; wait until both are in and
    // nothing has changed for a second (bounded: 20 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last: (usize, Instant) = (usize::MAX, Instant::now());
    let (decisions, gaps) = loop {
        let (d, g) = rows(&db);
        let seen = d.len() + g.len();
        if seen != last.0 {
            last = (seen, Instant::now());
        }
        let complete =
            d.iter().any(|r| r["verdict"] == "allow") && d.iter().any(|r| r["verdict"] == "deny");
        if (complete && last.1.elapsed() >= Duration::from_secs(1)) || Instant::now() > deadline {
            break (d, g);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let agents_tail: Vec<String> = lab.agents.iter().map(|a| a.log_tail()).collect();
    lab.teardown().expect("teardown");

    let mut by_essence: std::collections::BTreeMap<String, u64> = Default::default();
    for r in &decisions {
        *by_essence.entry(essence(r)).or_default() += r["count"].as_u64().unwrap_or(0);
    }
    let allowed =
        "n1 ingress allow tcp default/testcurl -> default/testweb :80 tier=networkpolicy \
                   policy=NetworkPolicy default/allow-testcurl-for-testweb rule=0 isolated_by=[]";
    let isolated = r#"["NetworkPolicy default/allow-testcurl-for-testweb", "NetworkPolicy default/deny-all-for-testweb"]"#;
    let denied_row = format!(
        "n1 ingress deny tcp default/other -> default/testweb :80 tier=networkpolicy \
         policy=- rule=- isolated_by={isolated}"
    );
    let found: Vec<&String> = by_essence.keys().collect();
    assert_eq!(
        found,
        {
            let mut v = vec![allowed, denied_row.as_str()];
            v.sort();
            v
        },
        "exactly the expected rows:\n{decisions:#?}\nagents:\n{}",
        agents_tail.join("\n")
    );
    // The allowed connection is one connection; the denied probe sent at least one SYN
    // inside its 300 ms (each retransmission is a denied packet of its own).
    assert_eq!(by_essence[allowed], 1, "{decisions:#?}");
    assert!(by_essence[&denied_row] >= 1, "{decisions:#?}");
    assert!(gaps.is_empty(), "no decision lost: {gaps:#?}");
    // Each row once: no (source, seq, idx) twice, rule ids as the enforcer logged them.
    let mut keys: Vec<(String, i64, i64)> = decisions
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap_or_default().to_string(),
                r["seq"].as_i64().unwrap_or(-1),
                r["idx"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n);
    for r in &decisions {
        let id = r["rule_id"].as_str().unwrap_or_default();
        let expected_start = if r["verdict"] == "allow" { 'P' } else { 'T' };
        assert!(id.starts_with(expected_start), "{r}");
        assert!(
            r["source"].as_str().unwrap_or_default().starts_with("n1/"),
            "{r}"
        );
    }
}
