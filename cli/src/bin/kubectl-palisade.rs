//! The same command as `palisade`, found by kubectl as the plugin `kubectl palisade`.
fn main() -> std::process::ExitCode {
    palisade_cli::main()
}
