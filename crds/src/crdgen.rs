//! The CRD generator: the YAML of Palisade's CRDs, generated from the types in
//! [`crate::palisade`]. The files in `crds/yaml/` are checked in; a test fails when they differ
//! from what the types generate. Regenerate them with
//! `cargo run -p palisade-crds --bin crdgen` (or `UPDATE_CRDS=1 cargo test -p palisade-crds`).

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::palisade::{Tier, TieredNetworkPolicy};
use crate::CrdError;

/// The command that regenerates the checked-in YAML.
pub const REGENERATE: &str = "cargo run -p palisade-crds --bin crdgen";

/// Palisade's CRDs, as objects.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Tier::crd(), TieredNetworkPolicy::crd()]
}

/// Each CRD's file name (in `crds/yaml/`) and YAML text, with a header saying how it is made.
pub fn generate() -> Result<Vec<(&'static str, String)>, CrdError> {
    let files = [
        ("tier.yaml", Tier::crd(), "crds/src/palisade.rs"),
        (
            "tierednetworkpolicy.yaml",
            TieredNetworkPolicy::crd(),
            "crds/src/palisade.rs",
        ),
    ];
    // The policy report CRDs Palisade installs when absent (crds/src/reports.rs).
    let reports = crate::reports::CRD_FILES
        .into_iter()
        .zip(crate::reports::crds())
        .map(|(file, crd)| (file, crd, "crds/src/reports.rs"));
    files
        .into_iter()
        .chain(reports)
        .map(|(file, crd, from)| {
            let body = serde_yaml::to_string(&crd).map_err(|e| CrdError::Syntax {
                object: format!(
                    "CustomResourceDefinition {}",
                    crd.metadata.name.as_deref().unwrap_or_default()
                ),
                message: e.to_string(),
            })?;
            Ok((
                file,
                format!("# Generated from {from} by `{REGENERATE}`: do not edit.\n{body}"),
            ))
        })
        .collect()
}

/// Where the checked-in YAML lives: `crds/yaml/`.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml")
}

/// Writes every CRD's YAML into `dir`, returning the paths written.
pub fn write(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let files = generate().map_err(std::io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}
