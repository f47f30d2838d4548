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

/// The audit database unavailable for 30 seconds while traffic flows: the operator cannot
/// commit (a writer holds SQLite's exclusive lock, as when the volume or server is gone),
/// acknowledges nothing, the agents keep their batches spooled and send them again; once the
/// database is back every allowed connection is in it exactly once (the counts add up to
/// the connections made), nothing twice, no gap.
#[test]
fn a_database_outage_of_30_seconds_loses_and_duplicates_nothing() {
    const OUTAGE: Duration = Duration::from_secs(30);
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
    let pair = "default/testcurl->default/testweb";
    let mut allowed = 0u64;
    let probe = |allowed: &mut u64| {
        let denied = lab.probe(&step3.scenario, &opts).expect("probes run");
        if !denied.iter().flatten().any(|p| p == pair) {
            *allowed += 1;
        }
    };
    // Traffic before, during and after the outage (bounded: a probe round every 500 ms).
    for _ in 0..4 {
        probe(&mut allowed);
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut locker = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(float(sys.argv[2]))\n\
             c.execute('COMMIT')\n",
        ])
        .arg(&db)
        .arg(OUTAGE.as_secs().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::BufRead;
        let out = locker.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("the locker reports");
        assert_eq!(line.trim(), "locked");
    }
    let locked_at = Instant::now();
    let during = db_rows_allowed(&db, pair);
    let allowed_before = allowed;
    let mut stored_late = None;
    while locked_at.elapsed() < OUTAGE {
        probe(&mut allowed);
        std::thread::sleep(Duration::from_millis(500));
        if stored_late.is_none() && locked_at.elapsed() > OUTAGE - Duration::from_secs(5) {
            stored_late = Some(db_rows_allowed(&db, pair));
        }
    }
    let allowed_during = allowed - allowed_before;
    assert!(
        locker.wait().expect("locker ends").success(),
        "the lock was held"
    );
    let stored_during = during;
    for _ in 0..4 {
        probe(&mut allowed);
        std::thread::sleep(Duration::from_millis(500));
    }
    // Everything arrives once the database is back (bounded: 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let stored = loop {
        let stored = db_rows_allowed(&db, pair);
        if stored >= allowed || Instant::now() > deadline {
            break stored;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    // A little longer: nothing more may come (a duplicate would).
    std::thread::sleep(Duration::from_secs(2));
    let (decisions, gaps) = rows(&db);
    let agents_tail: Vec<String> = lab.agents.iter().map(|a| a.log_tail()).collect();
    lab.teardown().expect("teardown");
    assert!(
        allowed >= 30,
        "traffic flowed throughout: {allowed} allowed connections"
    );
    assert!(
        allowed_during >= 20,
        "connections during the outage: {allowed_during}"
    );
    assert_eq!(
        stored_late,
        Some(stored_during),
        "nothing was committed while the database was unavailable"
    );
    assert_eq!(
        (stored, db_sum_allowed(&decisions, pair)),
        (allowed, allowed),
        "every allowed connection stored exactly once\nagents:\n{}",
        agents_tail.join("\n")
    );
    assert!(gaps.is_empty(), "no decision lost: {gaps:#?}");
}

/// Allowed connections of `pair` in the database now (the sum of the rows' counts).
fn db_rows_allowed(db: &Path, pair: &str) -> u64 {
    db_sum_allowed(&rows(db).0, pair)
}

fn db_sum_allowed(decisions: &[Value], pair: &str) -> u64 {
    decisions
        .iter()
        .filter(|r| {
            r["verdict"] == "allow"
                && format!(
                    "{}/{}->{}/{}",
                    r["src_namespace"].as_str().unwrap_or("-"),
                    r["src_pod"].as_str().unwrap_or("-"),
                    r["dst_namespace"].as_str().unwrap_or("-"),
                    r["dst_pod"].as_str().unwrap_or("-")
                ) == pair
        })
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum()
}
