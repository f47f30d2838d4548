//! The Helm chart carries the generated CRDs byte for byte: Palisade's own in
//! `charts/palisade/crds/` (always installed), the report APIs' in
//! `charts/palisade/files/optional-crds/` (installed when `reports.installCRDs`).
//! `UPDATE_CRDS=1` copies them (`charts/tests` checks the same from the chart's side).

use std::path::{Path, PathBuf};

/// The report APIs' groups: optional in the chart (another tool may own them).
const OPTIONAL_GROUPS: &[&str] = &["wgpolicyk8s.io", "openreports.io"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn group(text: &str) -> String {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).expect("a CRD document");
    doc["spec"]["group"]
        .as_str()
        .expect("spec.group")
        .to_string()
}

#[test]
fn the_chart_has_every_generated_crd() {
    let generated = repo().join("crds/yaml");
    let chart = repo().join("charts/palisade");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&generated)
        .expect("crds/yaml")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "crds/yaml holds the generated CRDs");
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for file in &files {
        let text = std::fs::read(file).expect("read CRD");
        let optional = OPTIONAL_GROUPS.contains(&group(&String::from_utf8_lossy(&text)).as_str());
        let folder = if optional {
            "files/optional-crds"
        } else {
            "crds"
        };
        let name = file.file_name().expect("a file name");
        let copy = chart.join(folder).join(name);
        if std::fs::read(&copy).ok().as_deref() != Some(text.as_slice()) {
            if update {
                std::fs::write(&copy, &text).expect("write the chart's copy");
            } else {
                stale.push(format!("cp {} {}", file.display(), copy.display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "the chart's CRDs differ from crds/yaml (or UPDATE_CRDS=1 cargo test -p palisade-crds --test chart_crds):\n{}",
        stale.join("\n")
    );
    // Nothing in the chart that is not generated.
    for folder in ["crds", "files/optional-crds"] {
        for entry in std::fs::read_dir(chart.join(folder))
            .expect("chart folder")
            .flatten()
        {
            let name = entry.file_name();
            assert!(
                generated.join(&name).exists(),
                "charts/palisade/{folder}/{} is not in crds/yaml",
                name.to_string_lossy()
            );
        }
    }
}
