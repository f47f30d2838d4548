//! The prober (`e2e probe`, hidden): from the namespace it runs in, tries each
//! target with bounded timeouts and a bounded number of threads, and prints one
//! JSON line per target, in order.
//!
//! - TCP / SCTP: connect within the timeout, then read the server's greeting.
//! - UDP: send a datagram, wait for the echo; a few tries, each a fraction of the
//!   timeout.
//!
//! A timeout is a denial (the policy dropped it). Anything else that is not a
//! success (refused, unreachable, connected but silent) is an error of the lab,
//! never a denial and never an allowance.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::sock::{self, Connect, Proto};

/// One thing to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub proto: Proto,
    pub addr: SocketAddr,
}

impl Target {
    /// `tcp:10.0.0.1:80`, `udp:[fd00::1]:53`.
    pub fn parse(s: &str) -> Option<Target> {
        let (p, a) = s.split_once(':')?;
        Some(Target {
            proto: Proto::parse(p)?,
            addr: a.parse().ok()?,
        })
    }

    pub fn arg(&self) -> String {
        format!("{}:{}", self.proto.as_str(), self.addr)
    }
}

/// What happened to one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "detail", rename_all = "lowercase")]
pub enum Outcome {
    Allowed,
    Denied,
    Error(String),
}

/// Timeouts of a probe.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// TCP/SCTP connect and read; UDP: the whole of its tries.
    pub timeout: Duration,
    pub udp_tries: u32,
    /// Without kernel SCTP, probe SCTP with a raw INIT / INIT ACK exchange.
    pub sctp_raw: bool,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            timeout: Duration::from_millis(1000),
            udp_tries: 3,
            sctp_raw: false,
        }
    }
}

/// Tries one target.
pub fn probe(target: Target, timing: Timing) -> Outcome {
    match target.proto {
        Proto::Udp => probe_udp(target.addr, timing),
        Proto::Sctp if timing.sctp_raw && !sock::sctp_available() => {
            crate::sctp::probe(target.addr, timing.timeout)
        }
        proto => probe_stream(proto, target.addr, timing.timeout),
    }
}

fn probe_stream(proto: Proto, addr: SocketAddr, timeout: Duration) -> Outcome {
    let fd = match sock::connect(proto, addr, timeout) {
        Ok(Connect::Connected(fd)) => fd,
        Ok(Connect::TimedOut) => return Outcome::Denied,
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) && proto == Proto::Sctp => {
            return Outcome::Error(
                "SCTP is not available in this kernel (CONFIG_IP_SCTP)".to_string(),
            )
        }
        Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => return Outcome::Denied,
        Err(e) => return Outcome::Error(format!("{} connect to {addr}: {e}", proto.as_str())),
    };
    let mut buf = [0u8; 64];
    match sock::read(fd.as_raw_fd(), &mut buf, Instant::now() + timeout) {
        Ok(Some(n)) if n > 0 => Outcome::Allowed,
        Ok(Some(_)) => Outcome::Error(format!(
            "{} {addr}: connected, but closed without a greeting",
            proto.as_str()
        )),
        Ok(None) => Outcome::Error(format!(
            "{} {addr}: connected, but no greeting within {timeout:?}",
            proto.as_str()
        )),
        Err(e) => Outcome::Error(format!("{} {addr}: read: {e}", proto.as_str())),
    }
}

fn probe_udp(addr: SocketAddr, timing: Timing) -> Outcome {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().unwrap_or(addr)
    } else {
        "0.0.0.0:0".parse().unwrap_or(addr)
    };
    let socket = match std::net::UdpSocket::bind(bind).and_then(|s| {
        s.connect(addr)?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(format!("udp socket to {addr}: {e}")),
    };
    let tries = timing.udp_tries.max(1);
    let each = (timing.timeout / tries).max(Duration::from_millis(50));
    if let Err(e) = socket.set_read_timeout(Some(each)) {
        return Outcome::Error(format!("udp {addr}: {e}"));
    }
    let payload = b"palisade-e2e-probe";
    let mut buf = [0u8; 64];
    for _ in 0..tries {
        if let Err(e) = socket.send(payload) {
            return Outcome::Error(format!("udp send to {addr}: {e}"));
        }
        let deadline = Instant::now() + each;
        // Stray datagrams (an earlier try's late echo is fine: it is an echo).
        while Instant::now() < deadline {
            match socket.recv(&mut buf) {
                Ok(n) if buf[..n] == payload[..] => return Outcome::Allowed,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break
                }
                Err(e) => return Outcome::Error(format!("udp {addr}: {e}")),
            }
        }
    }
    Outcome::Denied
}

/// One line of `probe`'s output.
#[derive(Debug, Serialize, Deserialize)]
pub struct Line {
    pub target: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Tries every target with at most `parallel` at once; results in input order.
pub fn probe_all(targets: &[Target], timing: Timing, parallel: usize) -> Vec<Outcome> {
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; targets.len()]);
    let next = AtomicUsize::new(0);
    let workers = parallel.clamp(1, 128).min(targets.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&t) = targets.get(i) else {
                    break;
                };
                let outcome = probe(t, timing);
                if let Ok(mut r) = results.lock() {
                    r[i] = Some(outcome);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Error("not probed".to_string())))
        .collect()
}

/// Runs `exe probe` inside namespace `ns` and returns one outcome per target.
/// Bounded: the prober is killed if it outlives its own worst case by far.
pub fn probe_from(
    exe: &Path,
    ns: &str,
    targets: &[Target],
    timing: Timing,
    parallel: usize,
) -> Result<Vec<Outcome>> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = Command::new(exe);
    cmd.arg("probe")
        .arg("--timeout-ms")
        .arg(timing.timeout.as_millis().to_string())
        .arg("--udp-tries")
        .arg(timing.udp_tries.to_string())
        .arg("--parallel")
        .arg(parallel.to_string())
        .args(timing.sctp_raw.then_some("--sctp-raw"))
        .args(targets.iter().map(Target::arg));
    let mut child = crate::netns::in_netns(cmd, ns)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the prober in {ns}"))?;
    let waves = targets.len().div_ceil(parallel.clamp(1, 128)) as u32;
    let limit = timing.timeout * 3 * waves + Duration::from_secs(10);
    let stdout = child.stdout.take().context("prober: no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stdout).read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("prober in {ns} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("prober reader panicked"))?;
    if !status.success() {
        bail!("prober in {ns} failed: {status}");
    }
    let lines: Vec<Line> = text
        .as_bytes()
        .lines()
        .map_while(|l| l.ok())
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(&l).with_context(|| format!("prober said {l:?}")))
        .collect::<Result<_>>()?;
    if lines.len() != targets.len() {
        bail!(
            "prober in {ns} answered {} of {} targets",
            lines.len(),
            targets.len()
        );
    }
    Ok(lines.into_iter().map(|l| l.outcome).collect())
}
