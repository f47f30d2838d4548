//! Policy reports in the lab: palisade-operator (manifest-directory source, reports written as
//! YAML into its --report-dir) and one palisade-enforcer agent per node, real iptables. Node
//! n1's agent is made to fail for real: its `iptables-*-restore` are wrappers that exit 1 while
//! a flag file exists (what a kernel refusing the rules looks like to the agent). The policy
//! selecting testweb (on n1) turns `fail` naming n1 and the error within seconds, and back to
//! `pass` once the agent's retry succeeds; connections the rules then deny show up in the report
//! as the `deniedLastHour` count from the audit log. Needs root and the three binaries (built by
//! `cargo build --workspace --bins`); skipped with a message otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::scenario;
use e2e::operator::{Agent, AgentSpec};
use e2e::probe::{Outcome, Target, Timing};
use e2e::runner::ScenarioLab;
use e2e::sock::Proto;
use serde_json::Value;

/// Finds a program on the PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// A folder of wrappers for every `*tables-*-restore` this machine has: each fails (exit 1,
/// an iptables-restore-like message) while `flag` exists, and runs the real program otherwise.
fn failing_wrappers(dir: &Path, flag: &Path) -> PathBuf {
    let bin = dir.join("failing-bin");
    std::fs::create_dir_all(&bin).expect("wrapper dir");
    for family in ["iptables", "ip6tables"] {
        for backend in ["nft", "legacy"] {
            let name = format!("{family}-{backend}-restore");
            let Some(real) = which(&name) else { continue };
            let script = format!(
                "#!/bin/sh\n\
                 if [ -e '{flag}' ]; then\n\
                 \x20 cat >/dev/null\n\
                 \x20 echo '{name}: line 2 failed (the report lab made this node fail)' >&2\n\
                 \x20 exit 1\n\
                 fi\n\
                 exec '{real}' \"$@\"\n",
                flag = flag.display(),
                real = real.display(),
            );
            let path = bin.join(&name);
            std::fs::write(&path, script).expect("wrapper");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    assert!(
        std::fs::read_dir(&bin).map(|d| d.count()).unwrap_or(0) > 0,
        "no iptables-*-restore on the PATH to wrap"
    );
    bin
}

/// The realisation result of `policy` in a report.
fn realisation<'a>(report: &'a Value, policy: &str) -> Option<&'a Value> {
    report["results"]
        .as_array()?
        .iter()
        .find(|r| r["policy"] == policy && r["category"] == "realisation")
}

const STEP2: &str = "walkthrough-2-deny-all-for-testweb.yaml";
const STEP3: &str = "walkthrough-3-allow-testcurl-for-testweb.yaml";
const ALLOW: &str = "NetworkPolicy/allow-testcurl-for-testweb";

#[test]
fn a_failing_enforcer_turns_the_policy_result_to_fail_and_back_to_pass() {
    let Some(opts) = common::operator_options() else {
        return;
    };
    let step2 = scenario(STEP2);
    let step3 = scenario(STEP3);
    let mut lab = ScenarioLab::build(&step2.scenario, &opts).expect("lab builds");
    lab.start(&step2, &opts).expect("operator and agents start");
    let cp = lab.control.as_ref().expect("operator mode");
    let run_dir = cp.manifests.parent().expect("run dir").to_path_buf();

    // Before: the deny-all is realised on n1 (testweb's node): pass.
    let report = cp
        .wait_report(Some("default"), Duration::from_secs(10), |r| {
            realisation(r, "NetworkPolicy/deny-all-for-testweb")
                .is_some_and(|x| x["result"] == "pass")
        })
        .expect("deny-all reported realised");
    eprintln!("before: {}", report["summary"]);

    // n1's agent restarted with the failing wrappers first on its PATH (it keeps its rules
    // across the restart, as on any stop).
    let flag = run_dir.join("fail-n1");
    let wrappers = failing_wrappers(&run_dir, &flag);
    let n1 = lab
        .node_names
        .iter()
        .position(|n| n == "n1")
        .expect("node n1");
    let old = lab.agents.remove(n1);
    lab.lab.stop(old.pid, Duration::from_secs(3));
    let path = std::env::join_paths(
        std::iter::once(wrappers).chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
    )
    .expect("PATH");
    let cp = lab.control.as_ref().expect("operator mode");
    let spec = AgentSpec {
        log: run_dir.join("agent-n1-failing.log"),
        ..old.spec.clone()
    };
    let agent = Agent::start_with_env(
        &lab.lab,
        opts.enforcer.as_deref().expect("enforcer"),
        &old.ns,
        cp,
        spec,
        &[("PATH", path)],
    )
    .expect("n1's agent restarts");
    lab.agents.insert(n1, agent);
    lab.wait_realised(step2.engine.cluster(), Duration::from_secs(20))
        .expect("n1 back in step 2");

    // The allow is written while n1 cannot apply anything: fail, naming n1 and the error.
    std::fs::write(&flag, "").expect("flag");
    let t = Instant::now();
    lab.write_manifests(&step3).expect("step 3 written");
    let cp = lab.control.as_ref().expect("operator mode");
    let report = cp
        .wait_report(Some("default"), Duration::from_secs(15), |r| {
            realisation(r, ALLOW).is_some_and(|x| x["result"] == "fail")
        })
        .expect("the allow is reported failed");
    let failed = realisation(&report, ALLOW).expect("result").clone();
    eprintln!("fail after {:?}: {failed}", t.elapsed());
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(message.contains("node n1"), "{failed}");
    assert!(message.contains("not applied"), "{failed}");
    assert!(
        message.contains("the report lab made this node fail"),
        "the enforcer's error is in the report: {failed}"
    );
    assert_eq!(failed["properties"]["failedNodes"], "n1", "{failed}");
    assert!(report["summary"]["fail"].as_u64().unwrap_or(0) >= 1);

    // Recovery: the agent's retry applies the rules; the result turns pass.
    std::fs::remove_file(&flag).expect("unflag");
    let t = Instant::now();
    let report = cp
        .wait_report(Some("default"), Duration::from_secs(40), |r| {
            realisation(r, ALLOW).is_some_and(|x| x["result"] == "pass")
        })
        .expect("the allow is reported realised after recovery");
    eprintln!(
        "pass {:?} after recovery: {}",
        t.elapsed(),
        realisation(&report, ALLOW).cloned().unwrap_or_default()
    );
    assert_eq!(report["summary"]["fail"], 0, "{report}");
    lab.wait_realised(step3.engine.cluster(), Duration::from_secs(10))
        .expect("step 3 in force everywhere");

    // Observed traffic: other -> testweb is denied (testweb is isolated and only testcurl
    // is allowed); the audit log counts it against the policies isolating testweb, and the
    // report shows the count.
    let endpoint = |name: &str| {
        step3
            .scenario
            .endpoints
            .iter()
            .position(|e| e.name == name)
            .unwrap_or_else(|| panic!("no endpoint {name}"))
    };
    let web = &step3.scenario.endpoints[endpoint("default/testweb")];
    let target = Target {
        proto: Proto::Tcp,
        addr: std::net::SocketAddr::new(web.ips[0], 80),
    };
    let from = lab.endpoint_ns[endpoint("default/other")].clone();
    let timing = Timing {
        timeout: Duration::from_millis(300),
        udp_tries: 1,
        sctp_raw: false,
    };
    for _ in 0..3 {
        let out = e2e::probe::probe_from(&opts.exe, &from, &[target], timing, 1).expect("probe");
        assert_eq!(out, [Outcome::Denied], "other -> testweb is denied");
    }
    let cp = lab.control.as_ref().expect("operator mode");
    let report = cp
        .wait_report(Some("default"), Duration::from_secs(15), |r| {
            realisation(r, "NetworkPolicy/deny-all-for-testweb").is_some_and(|x| {
                x["properties"]["deniedLastHour"]
                    .as_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n >= 1)
            })
        })
        .expect("the denied connections are in the report");
    eprintln!(
        "observed: {}",
        realisation(&report, "NetworkPolicy/deny-all-for-testweb")
            .map(|x| x["properties"].clone())
            .unwrap_or_default()
    );
    lab.teardown().expect("teardown");
}
