//! Files the operator writes for others to read (certificates, report documents).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Replaces `path` with `text` so a reader sees the old or the new content, never a part,
/// and the file ends with exactly `mode` (e.g. `0o600` for a private key).
///
/// The temporary file is `.{file name}.tmp` beside `path`: one per target, so two files of
/// one directory (`tls.crt`, `tls.key`) never share it. A leftover temporary file is removed
/// first, because `open`'s mode applies only when it creates the file: reusing a 0644
/// leftover would publish a key world-readable. The mode is also set explicitly, as the
/// process umask may narrow the mode given at creation.
pub fn write_atomically(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    let tmp = temp_path(path)?;
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn temp_path(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    Ok(path.with_file_name(format!(".{}.tmp", name.to_string_lossy())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn a_leftover_world_readable_temp_file_does_not_leak_into_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("tls.key");
        let leftover = dir.path().join(".tls.key.tmp");
        std::fs::write(&leftover, "stale").expect("leftover");
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomically(&key, "secret", 0o600).expect("write");
        assert_eq!(mode_of(&key), 0o600);
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "secret");
        assert!(!leftover.exists(), "the temporary file is renamed away");
    }

    #[test]
    fn replacing_a_file_sets_the_mode_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("tls.crt");
        std::fs::write(&cert, "old").expect("old");
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        write_atomically(&cert, "new", 0o644).expect("write");
        assert_eq!(mode_of(&cert), 0o644);
        assert_eq!(std::fs::read_to_string(&cert).expect("read"), "new");
    }

    #[test]
    fn two_files_of_one_directory_use_their_own_temp_files() {
        let path = Path::new("/x/tls.crt");
        let other = Path::new("/x/tls.key");
        assert_ne!(
            temp_path(path).expect("crt"),
            temp_path(other).expect("key")
        );
    }

    #[test]
    fn a_path_without_a_file_name_is_an_error() {
        let err = write_atomically(Path::new("/"), "x", 0o644).expect_err("no file name");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}
