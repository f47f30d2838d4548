//! The operator stream in the lab, as a cluster runs it: palisade-operator
//! (manifest-directory source) and one palisade-enforcer agent per node as
//! separate processes, real packets. Needs root and the three binaries (built by
//! `cargo build --workspace --bins`); skipped with a message otherwise.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::scenario;
use e2e::operator::{Agent, AgentSpec};
use e2e::probe::{Outcome, Target, Timing};
use e2e::runner::{Loaded, Options, ScenarioLab};
use e2e::sock::Proto;
use serde_json::Value;

const STEP1: &str = "walkthrough-1-no-policy.yaml";
const STEP2: &str = "walkthrough-2-deny-all-for-testweb.yaml";
const STEP3: &str = "walkthrough-3-allow-testcurl-for-testweb.yaml";

/// Probes every pair and checks the scenario's expected verdicts.
fn assert_verdicts(lab: &ScenarioLab, step: &Loaded, opts: &Options, when: &str) {
    let denied = lab.probe(&step.scenario, opts).expect("probes run");
    let outcome = step.scenario.compare(denied);
    assert!(
        outcome.passed,
        "{when}: verdicts are not those of {}:\n{}",
        step.scenario.name,
        outcome.plain()
    );
}

fn endpoint(step: &Loaded, name: &str) -> usize {
    step.scenario
        .endpoints
        .iter()
        .position(|e| e.name == name)
        .unwrap_or_else(|| panic!("no endpoint {name}"))
}

#[test]
fn a_policy_edited_while_probing_changes_real_verdicts() {
    let Some(opts) = common::operator_options() else {
        return;
    };
    let step1 = scenario(STEP1);
    let step2 = scenario(STEP2);
    let step3 = scenario(STEP3);
    let mut lab = ScenarioLab::build(&step1.scenario, &opts).expect("lab builds");
    lab.start(&step1, &opts).expect("operator and agents start");
    assert_eq!(lab.agents.len(), 2);
    assert!(
        lab.enforcers.is_empty(),
        "no file-fed enforcer in operator mode"
    );

    // Probes run all along, from testcurl and from other to testweb.
    let web = endpoint(&step1, "default/testweb");
    let web_ip = step1.scenario.endpoints[web].ips[0];
    let target = Target {
        proto: Proto::Tcp,
        addr: std::net::SocketAddr::new(web_ip, 80),
    };
    // Generous: a timeout is read as a denial, and CI machines are busy.
    let timing = Timing {
        timeout: Duration::from_millis(500),
        udp_tries: 1,
        sctp_raw: false,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let probers: Vec<_> = ["default/testcurl", "default/other"]
        .into_iter()
        .map(|from| {
            let ns = lab.endpoint_ns[endpoint(&step1, from)].clone();
            let exe = opts.exe.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // (sent, allowed) per probe.
                let mut seen: Vec<(Instant, bool)> = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(25);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let sent = Instant::now();
                    let out = e2e::probe::probe_from(&exe, &ns, &[target], timing, 1)
                        .expect("prober runs");
                    seen.push((sent, out[0] == Outcome::Allowed));
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // Deny-all for testweb, then allow testcurl: each written while probes run;
    // `apply_loaded` returns once both agents report the new rules realised.
    let t2 = Instant::now();
    lab.apply_loaded(&step2).expect("deny-all in force");
    let r2 = Instant::now();
    eprintln!("deny-all in force after {:?}", r2 - t2);
    std::thread::sleep(Duration::from_millis(1200));
    let t3 = Instant::now();
    lab.apply_loaded(&step3).expect("allow in force");
    let r3 = Instant::now();
    eprintln!("allow in force after {:?}", r3 - t3);
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let mut results = probers
        .into_iter()
        .map(|h| h.join().expect("prober thread"));
    let curl = results.next().expect("testcurl probes");
    let other = results.next().expect("other probes");

    // Verdicts of the probes sent in [from, to).
    let phase = |seen: &[(Instant, bool)], from: Option<Instant>, to: Instant| -> Vec<bool> {
        seen.iter()
            .filter(|(t, _)| from.is_none_or(|f| *t >= f) && *t < to)
            .map(|s| s.1)
            .collect()
    };
    let end = Instant::now();
    // testcurl -> testweb: allowed, denied once the deny-all is in force, allowed
    // again once the allow is.
    let before = phase(&curl, None, t2);
    assert!(
        !before.is_empty() && before.iter().all(|a| *a),
        "{before:?}"
    );
    let denied = phase(&curl, Some(r2), t3);
    assert!(
        !denied.is_empty() && denied.iter().all(|a| !*a),
        "{denied:?}"
    );
    let allowed = phase(&curl, Some(r3), end);
    assert!(
        !allowed.is_empty() && allowed.iter().all(|a| *a),
        "{allowed:?}"
    );
    // other -> testweb: allowed, then denied from the deny-all on, for good.
    let before = phase(&other, None, t2);
    assert!(
        !before.is_empty() && before.iter().all(|a| *a),
        "{before:?}"
    );
    let after = phase(&other, Some(r2), end);
    assert!(!after.is_empty() && after.iter().all(|a| !*a), "{after:?}");

    assert_verdicts(&lab, &step3, &opts, "at the end");
    lab.teardown().expect("teardown");
}

#[test]
fn enforcers_keep_enforcing_while_the_operator_is_down_and_resume() {
    let Some(opts) = common::operator_options() else {
        return;
    };
    let step2 = scenario(STEP2);
    let step3 = scenario(STEP3);
    let mut lab = ScenarioLab::build(&step2.scenario, &opts).expect("lab builds");
    lab.start(&step2, &opts).expect("operator and agents start");
    assert_verdicts(&lab, &step2, &opts, "before the outage");

    // Killed: no goodbye. The agents notice, keep their rules and retry.
    let t = Instant::now();
    if let Some(cp) = lab.control.as_mut() {
        cp.kill(&lab.lab);
    }
    for a in lab.agents.iter_mut() {
        a.wait_for(&lab.lab, "the stream down", Duration::from_secs(10), |v| {
            v.get("stream").and_then(Value::as_str) == Some("down")
        })
        .expect("agent notices the outage");
    }
    eprintln!("agents noticed the outage after {:?}", t.elapsed());
    assert_verdicts(&lab, &step2, &opts, "during the outage");

    // A change written while the operator is down changes nothing yet.
    lab.write_manifests(&step3).expect("manifests written");
    std::thread::sleep(Duration::from_millis(300));
    assert_verdicts(&lab, &step2, &opts, "during the outage, after an edit");
    for a in lab.agents.iter_mut() {
        a.drain();
        assert!(
            // From the first rule set realised on: an agent that started before the
            // operator listened has nothing in force yet, and says so.
            a.seen
                .iter()
                .skip_while(|v| v.get("realised").is_none())
                .filter(|v| v.get("stream").and_then(Value::as_str) == Some("down"))
                .all(|v| v.get("in_force").and_then(Value::as_u64).is_some()),
            "rules in force all along: {:?}",
            a.seen
        );
    }

    // Back: the agents reconnect, resume from what they have, apply the edit.
    let t = Instant::now();
    if let Some(cp) = lab.control.as_mut() {
        cp.start(&lab.lab).expect("operator restarts");
    }
    lab.wait_realised(step3.engine.cluster(), Duration::from_secs(20))
        .expect("the edit is realised after the restart");
    eprintln!("edit realised {:?} after the restart", t.elapsed());
    assert_verdicts(&lab, &step3, &opts, "after the restart");
    let log = lab.operator_log();
    let resumed = log
        .lines()
        .filter(|l| l.contains("enforcer connected") && l.contains("applied=Some("))
        .count();
    assert!(
        resumed >= 2,
        "the agents resumed with their version:\n{log}"
    );
    lab.teardown().expect("teardown");
}

#[test]
fn an_enforcer_claiming_another_node_is_refused() {
    let Some(opts) = common::operator_options() else {
        return;
    };
    let step2 = scenario(STEP2);
    let mut lab = ScenarioLab::build(&step2.scenario, &opts).expect("lab builds");
    lab.start(&step2, &opts).expect("operator and agents start");
    let cp = lab.control.as_ref().expect("operator mode");
    let dir = cp.manifests.parent().expect("run dir").to_path_buf();
    let n1_token = cp.tokens.get("n1").cloned().expect("n1 token");
    let forged = dir.join("forged-token");
    std::fs::write(&forged, "not-a-lab-token").expect("write");
    let enforcer = opts.enforcer.clone().expect("enforcer");
    let ns = lab.lab.nodes[0].ns.clone();

    // In node n1's namespace, with n1's token, asking for n2's rules.
    let claims = [
        (
            "wrong node",
            "n2",
            n1_token,
            "PermissionDenied",
            "wrong_node",
        ),
        (
            "forged token",
            "n1",
            forged,
            "Unauthenticated",
            "unauthenticated",
        ),
    ];
    for (i, (what, node, token_file, code, reason)) in claims.into_iter().enumerate() {
        let spec = AgentSpec {
            node: node.to_string(),
            token_file,
            state_file: dir.join(format!("rogue-{i}.json")),
            log: dir.join(format!("rogue-{i}.log")),
        };
        let cp = lab.control.as_ref().expect("operator mode");
        let mut rogue = Agent::start(&lab.lab, &enforcer, &ns, cp, spec).expect("agent starts");
        let line = rogue
            .wait_for(&lab.lab, "a refusal", Duration::from_secs(10), |v| {
                v.get("stream").and_then(Value::as_str) == Some("refused")
            })
            .expect("refused");
        assert_eq!(line["code"], code, "{what}: {line}");
        // Refused again on retry, never served: nothing applied, nothing kept.
        let mut refusals = 0;
        rogue
            .wait_for(&lab.lab, "a second refusal", Duration::from_secs(10), |v| {
                if v.get("stream").and_then(Value::as_str) == Some("refused") {
                    refusals += 1;
                }
                refusals >= 2 || v.get("realised").is_some()
            })
            .expect("retried");
        assert!(
            rogue.seen.iter().all(|v| v.get("realised").is_none()),
            "{what}: {:?}",
            rogue.seen
        );
        assert!(!rogue.spec.state_file.exists(), "{what}: a state was kept");
        lab.lab.stop(rogue.pid, Duration::from_secs(2));
        let log = lab.operator_log();
        assert!(
            log.lines()
                .any(|l| l.contains("enforcer stream refused") && l.contains(reason)),
            "{what}: no refusal line with reason {reason} in the operator log:\n{log}"
        );
    }
    // The real enforcers were not disturbed.
    assert_verdicts(&lab, &step2, &opts, "after the refusals");
    lab.teardown().expect("teardown");
}
