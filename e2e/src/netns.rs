//! Network namespaces: create, configure (`ip -batch`, sysctls), run processes in
//! them, and remove them with whatever still runs inside.
//!
//! Everything here works on named namespaces (`/run/netns/NAME`, as `ip netns`
//! makes them). Processes are started with `setns` in the child before `exec`, so
//! no shell and no `ip netns exec` sits between us and them.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Every namespace this lab creates starts with this.
pub const PREFIX: &str = "pal-";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `ip ARGS` (in the current namespace) and fails with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn add(name: &str) -> Result<()> {
    if crate::signals::stopping() {
        bail!("stopping: not creating {name}");
    }
    ip(&["netns", "add", name])
}

/// Runs many `ip` commands, one per line, inside namespace `ns` in one process.
pub fn batch(ns: &str, commands: &[String]) -> Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    {
        let mut stdin = child.stdin.take().context("ip -batch: no stdin")?;
        let mut text = commands.join("\n");
        text.push('\n');
        stdin
            .write_all(text.as_bytes())
            .context("writing to ip -batch")?;
    }
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} -batch failed: {}\ncommands:\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            commands.join("\n")
        );
    }
    Ok(())
}

/// Sets sysctls (`net.ipv4.ip_forward` style keys) inside namespace `ns`.
pub fn sysctl(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    let mut cmd = Command::new("sysctl");
    cmd.arg("-q").arg("-w");
    for (k, v) in settings {
        cmd.arg(format!("{k}={v}"));
    }
    let out = in_netns(cmd, ns)?
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running sysctl in {ns}"))?;
    if !out.status.success() {
        bail!(
            "sysctl in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Prepares `cmd` to run inside namespace `ns`: the child joins it before `exec`,
/// gets the signals the parent blocked back, and dies with the thread that
/// started it (so nothing outlives a killed lab).
pub fn in_netns(mut cmd: Command, ns: &str) -> Result<Command> {
    let file = File::open(path(ns)).with_context(|| format!("opening netns {ns}"))?;
    // SAFETY: the closure only makes async-signal-safe system calls (setns,
    // sigprocmask, prctl) on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in crate::signals::HANDLED {
                libc::sigaddset(&mut set, sig);
            }
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
    Ok(cmd)
}

/// The namespaces whose names start with `prefix`, sorted.
pub fn list(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The processes running in namespace `ns` (as `ip netns pids` finds them).
pub fn pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes namespace `ns`, first killing the processes left inside it (only ever
/// processes a lab started there). Bounded: gives up after a few seconds.
pub fn delete(ns: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = pids(ns);
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in left {
            // SAFETY: plain kill(2) of a process found inside our own namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if path(ns).exists() {
        if let Err(e) = ip(&["netns", "delete", ns]) {
            // Someone else (the signal thread, a concurrent cleanup) was faster.
            if path(ns).exists() {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Removes every namespace whose name starts with `prefix`; returns those removed.
pub fn delete_all(prefix: &str) -> (Vec<String>, Vec<anyhow::Error>) {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for ns in list(prefix) {
        match delete(&ns) {
            Ok(()) => removed.push(ns),
            Err(e) => errors.push(e),
        }
    }
    (removed, errors)
}
