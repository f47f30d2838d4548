//! The scenario's `policies` text, converted by `palisade-crds`.

use anyhow::{bail, Result};
use palisade_policy::model::{Policy, Tier};

/// Converts multi-document policy YAML into the engine's policies and tiers.
pub fn convert(text: &str) -> Result<(Vec<Policy>, Vec<Tier>)> {
    if text.trim().is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    bail!("policy conversion (palisade-crds) is not available yet")
}
