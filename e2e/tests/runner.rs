//! The runner: output and exit codes of `e2e run`, the engine check, and a real
//! enforcer run when its binary has been built. Needs root; skipped otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::runner::{disagreements, Options, ScenarioLab};
use palisade_policy::scenario::Scenario;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: the lab needs root");
    }
    root
}

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_e2e"))
}

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

#[test]
fn run_prints_the_contract_json_and_exits_0() {
    if !root() {
        return;
    }
    let out = Command::new(exe())
        .args(["run", "--no-enforcer", "-o", "json"])
        .arg(scenarios().join("walkthrough-1-no-policy.yaml"))
        .output()
        .expect("e2e runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(v["name"], "walkthrough-1-no-policy");
    assert_eq!(v["passed"], true);
    assert_eq!(
        v["results"][0]["probe"],
        serde_json::json!({"port": 80, "protocol": "TCP"})
    );
    assert_eq!(v["results"][0]["denied"], serde_json::json!([]));
}

#[test]
fn an_unparsable_file_exits_2_naming_file_and_line() {
    let dir = std::env::temp_dir().join(format!("e2e-test-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "name: bad\npods: [\n").expect("write");
    let out = Command::new(exe())
        .args(["run", "--no-enforcer"])
        .arg(&bad)
        .output()
        .expect("e2e runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("line"),
        "{stderr}"
    );
    assert_eq!(stdout.trim(), "0 passed, 0 failed");
}

#[test]
fn the_engine_check_names_pairs_where_kernel_and_engine_differ() {
    if !root() {
        return;
    }
    let path = scenarios().join("walkthrough-1-no-policy.yaml");
    let loaded = e2e::runner::load(&path).expect("loads");
    let scenario: &Scenario = &loaded.scenario;
    let opts = Options::new(exe());
    let lab = ScenarioLab::build(scenario, &opts).expect("lab builds");
    // The kernel of node n1 drops what reaches testweb; the engine knows no policy.
    let n1 = &lab.lab.nodes[0].ns;
    let status = Command::new("ip")
        .args(["netns", "exec", n1, "iptables", "-w", "-A", "FORWARD"])
        .args([
            "-d",
            "10.244.1.2",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DROP",
        ])
        .status()
        .expect("iptables runs");
    assert!(status.success());
    let kernel = lab.probe(scenario, &opts).expect("probes run");
    let found = disagreements(scenario, &scenario.evaluate(&loaded.engine), &kernel);
    let pairs: Vec<String> = found.iter().map(|d| d.pair.clone()).collect();
    assert_eq!(
        pairs,
        [
            "default/other->default/testweb",
            "default/testcurl->default/testweb"
        ]
    );
    assert!(found.iter().all(|d| !d.engine_denied));
    assert!(found[0]
        .to_string()
        .contains("engine allowed, kernel denied"));
}

#[test]
fn the_walkthrough_passes_on_real_enforcers() {
    if !root() {
        return;
    }
    let Ok(enforcer) = e2e::enforcer::find_binary(None, &exe()) else {
        eprintln!("skipped: palisade-enforcer is not built (cargo build -p palisade-enforcer)");
        return;
    };
    let out = Command::new(exe())
        .args(["run", "--enforcer"])
        .arg(&enforcer)
        .arg(scenarios().join("walkthrough-2-deny-all-for-testweb.yaml"))
        .arg(scenarios().join("walkthrough-3-allow-testcurl-for-testweb.yaml"))
        .output()
        .expect("e2e runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        "PASS walkthrough-2-deny-all-for-testweb\nPASS walkthrough-3-allow-testcurl-for-testweb\n2 passed, 0 failed\n"
    );
    assert!(!stderr.contains("disagree"), "{stderr}");
}

#[test]
fn the_demo_walks_through_on_one_lab() {
    if !root() {
        return;
    }
    let Ok(enforcer) = e2e::enforcer::find_binary(None, &exe()) else {
        eprintln!("skipped: palisade-enforcer is not built (cargo build -p palisade-enforcer)");
        return;
    };
    let out = Command::new(exe())
        .args(["demo", "--enforcer"])
        .arg(&enforcer)
        .arg("--scenarios")
        .arg(scenarios())
        .output()
        .expect("e2e runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.matches("Lab ").count(), 1, "one lab for all steps");
    assert!(stdout.contains("report version 3"), "{stdout}");
    assert!(stdout.contains("every step matched"), "{stdout}");
    // Step 3: testcurl gets through, other still times out.
    let step3 = stdout.split("Step 3/3").nth(1).unwrap_or_default();
    let line = |pair: &str| {
        step3
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .contains(pair)
            })
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("default/testcurl -> default/testweb").contains("connected"));
    assert!(line("default/other -> default/testweb").contains("timed out"));
}
