//! One `palisade-enforcer run --state FILE` per node, inside the node's namespace.
//!
//! The state file is rewritten atomically (write, rename) for each new rule set;
//! the enforcer prints `{"applied_version":N}` on stdout once the kernel has it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use palisade_policy::compiled::NodeRuleSet;

use crate::topology::Lab;

/// How long an enforcer may take to apply a rule set.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds the enforcer binary: `explicit`, else next to `exe` (the same
/// `target/debug` or `target/release`), else its parent (tests live in `deps/`).
pub fn find_binary(explicit: Option<&Path>, exe: &Path) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("enforcer binary {} does not exist", p.display());
    }
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join("palisade-enforcer");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "palisade-enforcer not found next to {}: build it with `cargo build -p palisade-enforcer` \
         (same profile) or pass --enforcer PATH",
        exe.display()
    )
}

/// A running enforcer.
pub struct Enforcer {
    pub node: String,
    pub pid: u32,
    pub state: PathBuf,
    pub log: PathBuf,
    lines: Receiver<String>,
    pub version: u64,
    /// The `{"error":...}` lines it printed (failed applies, rules enforced
    /// fail-closed).
    pub errors: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Applied {
    applied_version: u64,
}

impl Enforcer {
    /// Writes the first rule set and starts the enforcer on it, in `ns`; returns
    /// once the enforcer reported it applied.
    pub fn start(
        lab: &Lab,
        binary: &Path,
        ns: &str,
        dir: &Path,
        rules: &NodeRuleSet,
    ) -> Result<Enforcer> {
        let state = dir.join(format!("{}.json", safe_name(&rules.node)));
        let log = dir.join(format!("{}.log", safe_name(&rules.node)));
        write_state(&state, rules)?;
        let mut cmd = Command::new(binary);
        cmd.arg("run").arg("--state").arg(&state);
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stderr(Stdio::from(log_file));
        let spawned = lab.spawn(ns, cmd)?;
        let stdout = spawned.stdout.context("enforcer: no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut enforcer = Enforcer {
            node: rules.node.clone(),
            pid: spawned.pid,
            state,
            log,
            lines: rx,
            version: rules.version,
            errors: Vec::new(),
        };
        enforcer.wait_applied(lab, rules.version, APPLY_TIMEOUT)?;
        Ok(enforcer)
    }

    /// Rewrites the state file with a new rule set and waits until it is applied.
    pub fn apply(&mut self, lab: &Lab, rules: &NodeRuleSet) -> Result<()> {
        write_state(&self.state, rules)?;
        self.version = rules.version;
        self.wait_applied(lab, rules.version, APPLY_TIMEOUT)
    }

    fn wait_applied(&mut self, lab: &Lab, version: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    if let Ok(a) = serde_json::from_str::<Applied>(line.trim()) {
                        if a.applied_version >= version {
                            return Ok(());
                        }
                    }
                    let value: serde_json::Value =
                        serde_json::from_str(line.trim()).unwrap_or_default();
                    if value.get("error").is_some() {
                        self.errors.push(line.trim().to_string());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !lab.running(self.pid) {
                        bail!(
                            "enforcer of node {} exited before applying version {version}{}",
                            self.node,
                            self.log_tail()
                        );
                    }
                    if left.is_zero() {
                        bail!(
                            "enforcer of node {} did not apply version {version} within {timeout:?}{}",
                            self.node,
                            self.log_tail()
                        );
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "enforcer of node {} closed its output before applying version {version}{}",
                        self.node,
                        self.log_tail()
                    );
                }
            }
        }
    }

    /// The enforcer's last errors and the last lines of its stderr, for error
    /// messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        if !self.errors.is_empty() {
            let start = self.errors.len().saturating_sub(5);
            out = format!(
                "\n  enforcer said:\n    {}",
                self.errors[start..].join("\n    ")
            );
        }
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return out;
        }
        let start = lines.len().saturating_sub(15);
        out + &format!(
            "\n  enforcer log ({}):\n    {}",
            self.log.display(),
            lines[start..].join("\n    ")
        )
    }
}

fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes the state file atomically (a reader never sees half a file).
pub fn write_state(path: &Path, rules: &NodeRuleSet) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(rules)?;
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
