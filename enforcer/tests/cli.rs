//! The `palisade-enforcer` binary, run as the lab runs it: `ip netns exec NODE …`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use palisade_policy::model::Family;

const BIN: &str = env!("CARGO_BIN_EXE_palisade-enforcer");

fn write_state(path: &std::path::Path, state: &palisade_enforcer::NodeRuleSet) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(state).expect("json")).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("palisade-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn apply_render_cleanup() {
    if !can_netns("cli apply_render_cleanup") {
        return;
    }
    let ns = Netns::new("cli");
    let dir = temp_dir("apply");
    let state_path = dir.join("state.json");
    write_state(&state_path, &sample_state(7, 0));
    let state = state_path.display().to_string();

    let out = sh(&format!("{BIN} render --state {state}"));
    assert!(
        out.contains("*filter") && out.contains("create PAL-"),
        "{out}"
    );

    let out = sh(&format!(
        "ip netns exec {} {BIN} apply --state {state}",
        ns.name
    ));
    let first: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("a line")).expect("json line");
    assert_eq!(first["applied_version"], 7, "{out}");
    assert!(ns
        .exec("iptables-save -t filter")
        .contains("-j PALISADE-FORWARD"));

    let (ok, out) = try_sh(&format!(
        "ip netns exec {} {BIN} apply --state {}",
        ns.name,
        dir.join("missing.json").display()
    ));
    assert!(!ok, "{out}");

    let out = sh(&format!("ip netns exec {} {BIN} cleanup", ns.name));
    assert!(out.contains("cleaned_up"), "{out}");
    assert!(!ns.exec("iptables-save -t filter").contains("PALISADE"));
    let _ = std::fs::remove_dir_all(dir);
}

/// An apply that creates more sets than the kernel's table of sets starts with says
/// so (one `hint` line naming the count and the parameter to raise), because growing
/// the table is most of a big node's first program.
#[test]
fn apply_hints_when_the_ipset_table_is_outgrown() {
    if !can_netns("cli apply_hints_when_the_ipset_table_is_outgrown") {
        return;
    }
    let slots = match std::fs::read_to_string(palisade_enforcer::apply::IPSET_MAX_SETS_PARAM)
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok())
    {
        Some(0) | None => 256,
        Some(n) => n,
    };
    let ns = Netns::new("clihint");
    let dir = temp_dir("hint");
    let state_path = dir.join("state.json");
    let mut state = sample_state(3, 0);
    let first = state.sets.len();
    for i in 0..300 {
        let addr = format!("10.99.{}.{}/32", i / 250, 1 + i % 250);
        state
            .sets
            .push(mk_set(&format!("extra/{i}"), Family::IPv4, &[&addr], &[]));
    }
    // Only the sets a rule matches on are created: a rule of shop/front on every port
    // (not merged into its policy's set) takes the 300.
    state.policies[2].ingress.push(mk_rule(
        1,
        palisade_policy::model::Action::Accept,
        vec![mk_match(Some((first..first + 300).collect()), None, None)],
    ));
    write_state(&state_path, &state);
    let out = sh(&format!(
        "ip netns exec {} {BIN} apply --state {}",
        ns.name,
        state_path.display()
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let created = lines
        .iter()
        .find_map(|v| v["sets_created"].as_u64())
        .expect("a report") as usize;
    assert!(created >= 300, "{out}");
    let hint = lines.iter().find_map(|v| v["hint"].as_str());
    if created > slots {
        let hint = hint.unwrap_or_else(|| panic!("no hint with {created} sets: {out}"));
        assert!(
            hint.contains(&format!("{created} ipsets created")) && hint.contains("max_sets="),
            "{hint}"
        );
    } else {
        assert!(hint.is_none(), "{out}");
    }
    sh(&format!("ip netns exec {} {BIN} cleanup", ns.name));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn run_follows_the_file_and_keeps_rules_on_sigterm() {
    if !can_netns("cli run") {
        return;
    }
    let ns = Netns::new("run");
    let dir = temp_dir("run");
    let state_path = dir.join("state.json");
    write_state(&state_path, &sample_state(1, 0));
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            BIN,
            "run",
            "--hook-check-ms",
            "100",
            "--state",
        ])
        .arg(&state_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let wait_for = |pred: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("expected line not printed within 10 s");
    };
    wait_for(&|v| v["applied_version"] == 1);
    let t = Instant::now();
    write_state(&state_path, &sample_state(2, 1));
    wait_for(&|v| v["applied_version"] == 2);
    eprintln!("file change applied after {:?}", t.elapsed());
    // Someone removes our hook and chains: the enforcer notices and
    // reinstalls everything.
    let installed = ns.exec("iptables-save -t filter | grep -v ^#");
    // (One atomic replacement of the table, as a firewall reload does.)
    ns.exec("iptables-save -t filter | grep -v PALISADE | iptables-restore -w");
    wait_for(&|v| v["applied_version"] == 2);
    assert_eq!(ns.exec("iptables-save -t filter | grep -v ^#"), installed);
    // A broken file is reported and the rules in force stay.
    std::fs::write(&state_path, b"{not json").expect("write");
    wait_for(&|v| v.get("error").is_some());
    let before = ns.exec("iptables-save -t filter | grep -v ^#");
    sh(&format!("kill -TERM {}", child.id()));
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let _ = reader.join();
    let after = ns.exec("iptables-save -t filter | grep -v ^#");
    assert_eq!(before, after, "SIGTERM keeps the rules");
    assert!(after.contains("-j PALISADE-FORWARD"));
    let _ = std::fs::remove_dir_all(dir);
}
