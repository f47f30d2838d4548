//! The checked-in CRD YAML (`crds/yaml/`) must be exactly what the types generate.

use palisade_crds::crdgen;

#[test]
fn checked_in_crd_yaml_matches_the_types() {
    let dir = crdgen::default_dir();
    if std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1") {
        crdgen::write(&dir).expect("write the CRD YAML");
        return;
    }
    let mut stale = Vec::new();
    for (file, generated) in crdgen::generate().expect("generate the CRD YAML") {
        let path = dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if on_disk == generated => {}
            Ok(_) => stale.push(format!(
                "{} differs from what the types generate",
                path.display()
            )),
            Err(e) => stale.push(format!("{} cannot be read: {e}", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nregenerate with `{}` (or `UPDATE_CRDS=1 cargo test -p palisade-crds --test crd_yaml`) and commit crds/yaml/",
        stale.join("\n"),
        crdgen::REGENERATE
    );
}
