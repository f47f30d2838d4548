//! Policy change → new verdict on real traffic, through the operator stream.
//!
//! The lab of the walkthrough (two nodes, testweb on n1, testcurl and other on
//! n2) runs as a cluster does: palisade-operator (manifest-directory source, its
//! folder polled every 20 ms) and one palisade-enforcer agent per node. testweb is
//! under a deny-all; each change rewrites `policies.yaml` to add or remove the
//! policy that lets testcurl in, alternately (so the pair flips allowed ⇄ denied),
//! while probers in testcurl's namespace open TCP connections to testweb:80
//! continuously (8 threads, a probe started every ~5 ms, 100 ms connect
//! timeout). For each change it reports the time from the write (the rename) to
//! the first probe that observed the new verdict: for an allow, the connect that
//! succeeded; for a deny, the first probe *sent* after which every probe times out
//! (seen 100 ms later, its timeout). Also the time until the agent whose rules
//! changed printed that it realised them (the apply itself, revocation included).
//!
//! Run as root, with the binaries built in the same profile:
//!
//! ```sh
//! cargo build --release -p palisade-operator -p palisade-enforcer
//! cargo bench -p e2e --bench stream_latency            # 50 changes
//! cargo bench -p e2e --bench stream_latency -- 10      # fewer
//! ```

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use e2e::probe::{Outcome, Target, Timing};
use e2e::runner::{load, Options, ScenarioLab};
use e2e::sock::Proto;

const PROBERS: usize = 8;
const PROBE_EVERY: Duration = Duration::from_millis(5);
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// A change that is not observed within this is a failure.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    e2e::signals::install();
    let changes = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(2, 500);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("stream_latency: skipped, the lab needs root");
        return;
    }
    let code = match run(changes) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("stream_latency: {e:#}");
            1
        }
    };
    e2e::signals::finish();
    std::process::exit(code);
}

/// Probes from the calling thread's namespace `ns` (joined once).
fn join_netns(ns: &str) -> Result<()> {
    let file = std::fs::File::open(e2e::netns::path(ns)).with_context(|| format!("netns {ns}"))?;
    // SAFETY: setns on this thread only, with a namespace file we hold open.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
struct Probe {
    sent: Instant,
    done: Instant,
    allowed: bool,
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], med, v[n - 1])
}

fn run(changes: usize) -> Result<()> {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_e2e"));
    let mut opts = Options::new(exe.clone());
    opts.enforcer = Some(e2e::enforcer::find_binary(None, &exe)?);
    opts.operator = Some(e2e::operator::find_binary(None, &exe)?);
    opts.timing.timeout = Duration::from_millis(300);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let deny = load(&dir.join("walkthrough-2-deny-all-for-testweb.yaml"))?;
    let allow = load(&dir.join("walkthrough-3-allow-testcurl-for-testweb.yaml"))?;
    let mut lab = ScenarioLab::build(&allow.scenario, &opts)?;
    lab.start(&allow, &opts)?;
    let endpoint = |name: &str| {
        allow
            .scenario
            .endpoints
            .iter()
            .position(|e| e.name == name)
            .with_context(|| format!("no endpoint {name}"))
    };
    let web = endpoint("default/testweb")?;
    let curl_ns = lab.endpoint_ns[endpoint("default/testcurl")?].clone();
    let target = Target {
        proto: Proto::Tcp,
        addr: SocketAddr::new(allow.scenario.endpoints[web].ips[0], 80),
    };
    let timing = Timing {
        timeout: PROBE_TIMEOUT,
        udp_tries: 1,
        sctp_raw: false,
    };

    // Probers: each joins testcurl's namespace and probes on its own schedule,
    // staggered so that a probe starts about every PROBE_EVERY overall.
    let log: Arc<Mutex<Vec<Probe>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let limit = Instant::now() + Duration::from_secs(30 + changes as u64 * 8);
    let mut threads = Vec::new();
    for k in 0..PROBERS {
        let (log, stop, ns) = (Arc::clone(&log), Arc::clone(&stop), curl_ns.clone());
        threads.push(std::thread::spawn(move || -> Result<()> {
            join_netns(&ns)?;
            std::thread::sleep(PROBE_EVERY * k as u32);
            let period = PROBE_EVERY * PROBERS as u32;
            while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                let sent = Instant::now();
                let outcome = e2e::probe::probe(target, timing);
                let done = Instant::now();
                let allowed = match outcome {
                    Outcome::Allowed => true,
                    Outcome::Denied => false,
                    Outcome::Error(e) => bail!("probe: {e}"),
                };
                if let Ok(mut l) = log.lock() {
                    l.push(Probe {
                        sent,
                        done,
                        allowed,
                    });
                }
                if let Some(rest) = period.checked_sub(done - sent) {
                    std::thread::sleep(rest);
                }
            }
            Ok(())
        }));
    }

    let mut to_verdict = Vec::new();
    let mut to_realised = Vec::new();
    std::thread::sleep(Duration::from_millis(300));
    let result = (|| -> Result<()> {
        for i in 0..changes {
            if e2e::signals::stopping() {
                bail!("interrupted");
            }
            let (step, want_allowed) = if i % 2 == 0 {
                (&deny, false)
            } else {
                (&allow, true)
            };
            let cp = lab.control.as_ref().context("operator mode")?;
            let written = Instant::now();
            cp.write_policies(&step.scenario.policies)?;
            // The first probe with the new verdict such that every later probe agrees
            // (a probe sent just before the change may still finish with the old one).
            let observed = loop {
                if written.elapsed() > CHANGE_TIMEOUT {
                    bail!("change {i}: the new verdict was not observed within {CHANGE_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(5));
                let probes: Vec<Probe> = log
                    .lock()
                    .map_err(|_| anyhow::anyhow!("log lock"))?
                    .iter()
                    .filter(|p| p.sent >= written)
                    .copied()
                    .collect();
                let mut sorted = probes;
                sorted.sort_by_key(|p| p.sent);
                // Settled: the last 3 probes have the new verdict.
                let n = sorted.len();
                if n < 3 || !sorted[n - 3..].iter().all(|p| p.allowed == want_allowed) {
                    continue;
                }
                let first = sorted
                    .iter()
                    .rposition(|p| p.allowed != want_allowed)
                    .map_or(0, |j| j + 1);
                let p = sorted[first];
                break if want_allowed {
                    p.done - written
                } else {
                    p.sent.saturating_duration_since(written)
                };
            };
            lab.wait_realised(step.engine.cluster(), CHANGE_TIMEOUT)?;
            // When the last agent's line saying so arrived (agents whose rules did
            // not change report nothing new).
            let realised = lab
                .agents
                .iter()
                .filter_map(|a| a.realised_at)
                .filter(|t| *t >= written)
                .max()
                .map_or(Duration::ZERO, |t| t - written);
            to_verdict.push(observed.as_secs_f64() * 1000.0);
            to_realised.push(realised.as_secs_f64() * 1000.0);
            eprintln!(
                "change {:>2} ({}): verdict after {:>6.1} ms, realised by the agent after {:>6.1} ms",
                i + 1,
                if want_allowed { "allow" } else { "deny " },
                observed.as_secs_f64() * 1000.0,
                realised.as_secs_f64() * 1000.0
            );
            std::thread::sleep(Duration::from_millis(150));
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("prober: {e:#}"),
            Err(_) => eprintln!("prober panicked"),
        }
    }
    let probes = log.lock().map(|l| l.len()).unwrap_or(0);
    lab.teardown()?;
    result?;
    let (min, med, max) = median(to_verdict.clone());
    let (rmin, rmed, rmax) = median(to_realised);
    let allows: Vec<f64> = to_verdict.iter().skip(1).step_by(2).copied().collect();
    let denies: Vec<f64> = to_verdict.iter().step_by(2).copied().collect();
    let (_, amed, amax) = median(allows);
    let (_, dmed, dmax) = median(denies);
    println!("policy change -> new verdict on real traffic, {changes} changes ({probes} probes)");
    println!("  verdict observed: min {min:.1} ms, median {med:.1} ms, max {max:.1} ms");
    println!("    allow changes: median {amed:.1} ms, max {amax:.1} ms; deny changes: median {dmed:.1} ms, max {dmax:.1} ms");
    println!("  realised (the agent reported it): min {rmin:.1} ms, median {rmed:.1} ms, max {rmax:.1} ms");
    println!(
        "  target: median < 200 ms ({}), worst < 1 s ({})",
        if med < 200.0 { "met" } else { "NOT met" },
        if max < 1000.0 { "met" } else { "NOT met" }
    );
    Ok(())
}
