//! The scenario's `policies` text, converted by `palisade-crds`.

use anyhow::Result;
use palisade_policy::model::{Policy, Tier};

/// Converts multi-document policy YAML into the engine's policies and tiers.
/// `scenario_text` (the whole file) only locates the block in error messages.
pub fn convert(text: &str, scenario_text: &str) -> Result<(Vec<Policy>, Vec<Tier>)> {
    let manifests = palisade_crds::convert::parse_manifests(text).map_err(|e| {
        anyhow::anyhow!(
            "policies (the block starting at line {}): {e}",
            policies_line(scenario_text)
        )
    })?;
    Ok((manifests.policies, manifests.tiers))
}

/// The line (1-based) where the `policies` block's content starts.
fn policies_line(text: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with("policies:"))
        .map_or(0, |i| i + 2)
}
