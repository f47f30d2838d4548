//! Writes Palisade's CRDs as YAML: `crdgen [DIR]` (default: the crate's `yaml/` folder).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(palisade_crds::crdgen::default_dir);
    match palisade_crds::crdgen::write(&dir) {
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
