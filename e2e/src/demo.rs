//! `e2e demo`: the testweb / testcurl walkthrough on one running lab.
//!
//! The lab is built once from the first step's scenario; each later step only
//! rewrites the policies (in the operator's manifest folder, which streams the
//! change to the enforcer agents; or, with `--file-fed`, the enforcers' state
//! files), then probes again and shows which connections got through and which
//! timed out.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use palisade_policy::scenario::Scenario;

use crate::probe;
use crate::runner::{load, Loaded, Options, ScenarioLab};

/// The walkthrough's steps, in order.
pub const STEPS: [&str; 3] = [
    "walkthrough-1-no-policy.yaml",
    "walkthrough-2-deny-all-for-testweb.yaml",
    "walkthrough-3-allow-testcurl-for-testweb.yaml",
];

/// Where the walkthrough files are by default: `e2e/scenarios` of the source tree
/// this binary was built from, else `./e2e/scenarios`.
pub fn default_dir() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("e2e/scenarios")
    }
}

fn same_topology(a: &Scenario, b: &Scenario) -> bool {
    a.nodes == b.nodes
        && a.pods == b.pods
        && a.ports == b.ports
        && a.endpoints == b.endpoints
        && a.probes == b.probes
}

/// Runs the walkthrough, printing as it goes; Ok(true) if every step matched
/// its scenario's `expected`.
pub fn run(dir: &Path, opts: &Options) -> Result<bool> {
    let steps: Vec<Loaded> = STEPS
        .iter()
        .map(|f| load(&dir.join(f)))
        .collect::<Result<_>>()?;
    let first = &steps[0];
    for s in &steps[1..] {
        if !same_topology(&first.scenario, &s.scenario) {
            bail!(
                "{} does not describe the same pods, ports and probes as {}",
                s.scenario.name,
                first.scenario.name
            );
        }
    }
    if opts.enforcer.is_none() {
        bail!("the demo needs the enforcer");
    }
    let scenario = &first.scenario;
    println!("Palisade walkthrough: testweb and testcurl, real packets in network namespaces");
    println!();
    let t = Instant::now();
    let mut lab = ScenarioLab::build(scenario, opts)?;
    lab.start(first, opts)?;
    if let Some(cp) = &lab.control {
        println!(
            "Operator {} (manifest folder {}) and {} enforcer agent(s), one per node, as separate processes.",
            cp.url(),
            cp.manifests.display(),
            lab.agents.len()
        );
    }
    println!(
        "Lab {} up in {} ms: {}",
        lab.lab.run_id,
        t.elapsed().as_millis(),
        describe(scenario, &lab)
    );
    let mut all_ok = true;
    for (i, step) in steps.iter().enumerate() {
        let s = &step.scenario;
        println!();
        println!("== Step {}/{}: {} ==", i + 1, steps.len(), s.name);
        if let Some(d) = &s.description {
            println!("{}", wrap(d, 78, ""));
        }
        if s.policies.trim().is_empty() {
            println!("Policies: none.");
        } else {
            println!("Policies:");
            for line in s.policies.lines() {
                println!("    {line}");
            }
        }
        if i > 0 {
            let t = Instant::now();
            lab.apply_loaded(step)?;
            if lab.control.is_some() {
                println!(
                    "Applied: policies.yaml rewritten; the operator streamed the change, {} enforcer agent(s) report version {} in {} ms.",
                    lab.agents.len(),
                    lab.agents.iter().map(|a| a.version).max().unwrap_or(0),
                    t.elapsed().as_millis()
                );
            } else {
                println!(
                    "Applied: state files rewritten, {} enforcer(s) report version {} in {} ms.",
                    lab.enforcers.len(),
                    lab.enforcers.first().map_or(0, |e| e.version),
                    t.elapsed().as_millis()
                );
            }
        }
        let t = Instant::now();
        let results = lab.probe_detailed(s, opts)?;
        let took = t.elapsed();
        let (text, denied, errors) = table(s, &results);
        print!("{text}");
        if errors > 0 {
            bail!("{errors} probe(s) failed in the lab (see above)");
        }
        let outcome = s.compare(denied);
        let verdict = if outcome.passed {
            "as expected".to_string()
        } else {
            all_ok = false;
            format!("NOT as expected:\n{}", outcome.plain())
        };
        println!(
            "{} connection(s) tried in {} ms: {verdict}",
            results.len(),
            took.as_millis()
        );
        if let Some(cp) = &lab.control {
            print_report(cp, step);
        }
    }
    lab.teardown()?;
    println!();
    println!(
        "{}",
        if all_ok {
            "Walkthrough done: every step matched its scenario."
        } else {
            "Walkthrough done: some steps did NOT match their scenario."
        }
    );
    Ok(all_ok)
}

/// The policy report of the step's namespace (the operator's YAML file), once it shows every
/// policy of the step realised or failed: its counts and every result that is not a pass.
fn print_report(cp: &crate::operator::ControlPlane, step: &Loaded) {
    let wanted: Vec<String> = step
        .engine
        .cluster()
        .policies
        .iter()
        .map(|p| format!("{}/{}", p.id.kind.as_str(), p.id.name))
        .collect();
    let ns = step
        .engine
        .cluster()
        .pods
        .first()
        .map_or("default", |p| p.namespace.as_str());
    let settled = |r: &serde_json::Value| {
        let results = r["results"].as_array().cloned().unwrap_or_default();
        wanted.iter().all(|w| {
            results.iter().any(|x| {
                x["policy"] == w.as_str()
                    && x["category"] == "realisation"
                    && (x["result"] == "pass" || x["result"] == "fail")
            })
        })
    };
    let file = format!("{}/policyreport.{ns}.yaml", cp.reports.display());
    match cp.wait_report(Some(ns), std::time::Duration::from_secs(5), settled) {
        Ok(r) => {
            let s = &r["summary"];
            println!(
                "Policy report {file}: pass {} fail {} warn {} error {} skip {}",
                s["pass"], s["fail"], s["warn"], s["error"], s["skip"]
            );
            for x in r["results"].as_array().into_iter().flatten() {
                if x["result"] != "pass" {
                    println!(
                        "    {} {}: {}",
                        x["result"].as_str().unwrap_or("?").to_uppercase(),
                        x["policy"].as_str().unwrap_or("?"),
                        x["message"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Err(_) if cp.report(Some(ns)).is_some() => {
            println!("Policy report {file}: written, but not settled within 5 s")
        }
        Err(_) => println!("Policy report {file}: not written yet"),
    }
}

fn describe(s: &Scenario, lab: &ScenarioLab) -> String {
    let mut parts = Vec::new();
    for (i, n) in lab.lab.nodes.iter().enumerate() {
        let pods: Vec<String> = s
            .pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(lab.node_names[i].as_str()))
            .map(|p| {
                let ips: Vec<String> = p.ips.iter().map(|ip| ip.to_string()).collect();
                format!("{} ({})", p.name, ips.join(", "))
            })
            .collect();
        parts.push(format!("node {} [{}]", n.name, pods.join(", ")));
    }
    parts.join("; ")
}

/// The per-connection table of one step; the denied pairs per probe; errors.
fn table(
    s: &Scenario,
    results: &[(usize, String, probe::Outcome)],
) -> (String, Vec<BTreeSet<String>>, usize) {
    let mut out = String::new();
    let mut denied = vec![BTreeSet::new(); s.probes.len()];
    let mut errors = 0;
    let src_width = results
        .iter()
        .filter_map(|(_, pair, _)| pair.split_once("->").map(|(a, _)| a.len()))
        .max()
        .unwrap_or(0);
    let dst_width = results
        .iter()
        .filter_map(|(_, pair, _)| pair.split_once("->").map(|(_, b)| b.len()))
        .max()
        .unwrap_or(0);
    for (pi, p) in s.probes.iter().enumerate() {
        let _ = writeln!(out, "  {} port {} ({:?}):", p.protocol, p.port, p.family);
        let mut rows: Vec<&(usize, String, probe::Outcome)> =
            results.iter().filter(|r| r.0 == pi).collect();
        rows.sort_by(|a, b| a.1.cmp(&b.1));
        for (_, pair, outcome) in rows {
            let expected_denied = s.expected[pi].contains(pair);
            let (what, is_denied) = match outcome {
                probe::Outcome::Allowed => ("connected".to_string(), false),
                probe::Outcome::Denied => ("timed out".to_string(), true),
                probe::Outcome::Error(e) => {
                    errors += 1;
                    (format!("LAB ERROR: {e}"), false)
                }
            };
            if is_denied {
                denied[pi].insert(pair.clone());
            }
            let mark = if matches!(outcome, probe::Outcome::Error(_)) {
                ""
            } else if is_denied == expected_denied {
                "as expected"
            } else if expected_denied {
                "UNEXPECTED: expected denied"
            } else {
                "UNEXPECTED: expected allowed"
            };
            let (src, dst) = pair.split_once("->").unwrap_or((pair.as_str(), ""));
            let _ = writeln!(
                out,
                "    {src:<sw$} -> {dst:<dw$}  {what:<10} {mark}",
                sw = src_width,
                dw = dst_width
            );
        }
    }
    (out, denied, errors)
}

fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(indent);
    for word in text.split_whitespace() {
        if line.len() + word.len() + 1 > width && !line.trim().is_empty() {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from(indent);
        }
        line.push_str(word);
        line.push(' ');
    }
    out.push_str(line.trim_end());
    out
}

/// Checks the demo's files exist (so the error names them).
pub fn check_dir(dir: &Path) -> Result<()> {
    for f in STEPS {
        let p = dir.join(f);
        if !p.is_file() {
            return Err(anyhow::anyhow!("{} not found", p.display()))
                .context("the walkthrough scenarios (pass --scenarios DIR)");
        }
    }
    Ok(())
}
