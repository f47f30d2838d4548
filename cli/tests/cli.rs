//! The `palisade` binary as a user runs it: output shapes and exit codes of the
//! scenario-format contract.

use std::path::PathBuf;
use std::process::{Command, Output};

fn palisade(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("run palisade")
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const WALK3: &str = "e2e/scenarios/walkthrough-3-allow-testcurl-for-testweb.yaml";

#[test]
fn the_conformance_suite_passes() {
    let o = palisade(&["test", "e2e/scenarios/"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
    let passed: usize = last
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 50, "{last}");
}

#[test]
fn json_output_echoes_probes_and_sorts_denied_pairs() {
    let o = palisade(&["test", "--output", "json", WALK3]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(v["name"], "walkthrough-3-allow-testcurl-for-testweb");
    assert_eq!(v["passed"], true);
    let result = &v["results"][0];
    assert_eq!(
        result["probe"],
        serde_json::json!({"port": 80, "protocol": "TCP"})
    );
    assert_eq!(
        result["denied"],
        serde_json::json!(["default/other->default/testweb"])
    );
    assert_eq!(
        result.as_object().map(|o| o.len()),
        Some(2),
        "only probe and denied"
    );
}

#[test]
fn a_wrong_expectation_fails_with_the_differing_pairs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(workspace().join(WALK3)).expect("read");
    let wrong = text.replace(
        "default/other->default/testweb",
        "default/testcurl->default/testweb",
    );
    assert_ne!(text, wrong);
    let path = dir.path().join("wrong.yaml");
    std::fs::write(&path, wrong).expect("write");
    let o = palisade(&["test", path.to_str().expect("utf-8 path")]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("FAIL walkthrough-3-allow-testcurl-for-testweb"),
        "{out}"
    );
    assert!(
        out.contains("default/other->default/testweb denied, expected allowed"),
        "{out}"
    );
    assert!(
        out.contains("default/testcurl->default/testweb allowed, expected denied"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("0 passed, 1 failed"), "{out}");
}

#[test]
fn unreadable_or_broken_files_exit_2_with_file_line_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: x\nnamespaces: {a: {}}\nbogus: 1\n").expect("write");
    let o = palisade(&[
        "test",
        bad.to_str().expect("path"),
        WALK3,
        "/nonexistent.yaml",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.yaml") && err.contains("bogus") && err.contains("line 3"),
        "{err}"
    );
    assert!(err.contains("/nonexistent.yaml: cannot read"), "{err}");
    // The good file still ran.
    assert!(stdout(&o).contains("PASS walkthrough-3"), "{}", stdout(&o));
}

#[test]
fn explain_names_the_deciding_rule_and_the_isolating_policies() {
    let o = palisade(&[
        "explain",
        WALK3,
        "--from",
        "default/testcurl",
        "--to",
        "default/testweb",
        "--port",
        "80/TCP",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("ALLOWED"), "{out}");
    assert!(
        out.contains("Accept by rule 0 of NetworkPolicy default/allow-testcurl-for-testweb"),
        "{out}"
    );
    let o = palisade(&[
        "explain",
        WALK3,
        "--from",
        "default/other",
        "--to",
        "default/testweb",
        "--port",
        "80/TCP",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("DENIED"), "{out}");
    assert!(
        out.contains("NetworkPolicy default/deny-all-for-testweb"),
        "{out}"
    );
    let o = palisade(&[
        "explain",
        WALK3,
        "--from",
        "default/nobody",
        "--to",
        "default/testweb",
        "--port",
        "80/TCP",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn explain_json_is_the_verdict() {
    let o = palisade(&[
        "explain",
        WALK3,
        "--from",
        "default/other",
        "--to",
        "default/testweb",
        "--port",
        "80/TCP",
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["allowed"], false);
    assert_eq!(v["ingress"]["decision"]["kind"], "noRuleMatched");
}

fn explain_tiers(file: &str, from: &str, to: &str, port: &str) -> (Option<i32>, String) {
    let path = format!("e2e/scenarios/{file}.yaml");
    let o = palisade(&["explain", &path, "--from", from, "--to", to, "--port", port]);
    (o.status.code(), stdout(&o))
}

#[test]
fn explain_shows_every_tier_visited_with_the_rule_that_passed_or_decided() {
    let (code, out) = explain_tiers("tier-tnp-pass-through-every-tier", "y/a", "x/b", "80/TCP");
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "tier first (priority 10, default Pass): passed by TieredNetworkPolicy first-pass rule 0",
        "tier admin (priority 100, default Pass): passed by ClusterNetworkPolicy admin-pass rule 0",
        "tier middle (priority 500, default Deny): passed by TieredNetworkPolicy middle-pass rule 0",
        "tier late (priority 5000, default Pass): passed by TieredNetworkPolicy late-pass rule 0",
        "tier baseline (priority 10000, default Pass): passed by ClusterNetworkPolicy baseline-pass",
        "tier last (priority 15000, default Deny): Accept by TieredNetworkPolicy last-accept rule 0",
    ] {
        assert!(out.contains(line), "{line}\n{out}");
    }
    let (code, out) = explain_tiers("tier-tnp-pass-through-every-tier", "z/a", "x/b", "80/TCP");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("tier last denies by default"), "{out}");
    assert!(
        out.contains(
            "tier last (priority 15000, default Deny): no rule matched, denied by the tier"
        ),
        "{out}"
    );
}

#[test]
fn explain_notes_fail_closed_rules_missing_tiers_and_ties() {
    let (code, out) = explain_tiers(
        "tier-tnp-missing-tier-fail-closed-pass-still-denies",
        "x/a",
        "ext:ext1",
        "80/UDP",
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("tier nonexistent (no such Tier: fail-closed at priority 0"),
        "{out}"
    );
    assert!(
        out.contains("note: TieredNetworkPolicy pass-domains spec.egress[0]: unsupported peer"),
        "{out}"
    );
    let (_, out) = explain_tiers(
        "tier-tnp-equal-tier-priorities-ordered-by-name",
        "y/a",
        "x/b",
        "80/TCP",
    );
    assert!(
        out.contains("priority 500 is shared with tier beta"),
        "{out}"
    );
    let (_, out) = explain_tiers(
        "tier-anp-equal-priority-cnp-then-anp-then-tnp",
        "z/a",
        "x/b",
        "80/TCP",
    );
    assert!(
        out.contains("note: equal priority 10: ClusterNetworkPolicy zz-cnp, AdminNetworkPolicy aa-anp, TieredNetworkPolicy aa-tnp"),
        "{out}"
    );
}
