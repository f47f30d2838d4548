//! What the operator-mode lab tests share: the e2e binary, the walkthrough scenarios and
//! the lab options (or why this machine cannot run them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::runner::{load, Loaded, Options};

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_e2e"))
}

/// A scenario of `e2e/scenarios/`.
pub fn scenario(name: &str) -> Loaded {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    load(&path).expect("walkthrough scenario loads")
}

/// Options for operator mode (palisade-operator and one palisade-enforcer agent per node),
/// or None, with the reason printed, when this machine cannot run it (not root, binaries
/// not built).
pub fn operator_options() -> Option<Options> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the lab needs root");
        return None;
    }
    let mut opts = Options::new(exe());
    let Ok(enforcer) = e2e::enforcer::find_binary(None, &exe()) else {
        eprintln!("skipped: palisade-enforcer is not built (cargo build --workspace --bins)");
        return None;
    };
    let Ok(operator) = e2e::operator::find_binary(None, &exe()) else {
        eprintln!("skipped: palisade-operator is not built (cargo build --workspace --bins)");
        return None;
    };
    opts.enforcer = Some(enforcer);
    opts.operator = Some(operator);
    opts.timing.timeout = Duration::from_millis(300);
    Some(opts)
}
