//! Durable file writes, for the state a crash must not tear: the IPAM journal and the host's
//! CNI configuration.
//!
//! A file is replaced by writing a temporary file, syncing it, renaming it over the target and
//! syncing the directory; a removal is followed by a directory sync. Only then is a step on
//! disk, and the crash-ordering arguments of the callers (journal before veth, generated
//! conflist before the original moves aside) assume that a step is on disk before the next
//! one starts.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A file operation that failed, with the file it failed on.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct DurableError {
    /// What was being done (`create`, `write`, `rename`, ...).
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

fn failed(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DurableError {
    let path = path.to_owned();
    move |source| DurableError { op, path, source }
}

/// The directory holding `path`, where its rename or removal is recorded.
fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Replaces `path` with `bytes` through the temporary file `tmp` (same directory, so the rename
/// is atomic): a reader sees the old content or the new, never a part. `mode`, when given, is
/// set on the new file before it becomes visible.
pub fn replace(
    path: &Path,
    tmp: &Path,
    bytes: &[u8],
    mode: Option<u32>,
) -> Result<(), DurableError> {
    let mut f = File::create(tmp).map_err(failed("create", tmp))?;
    f.write_all(bytes).map_err(failed("write", tmp))?;
    if let Some(mode) = mode {
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(failed("chmod", tmp))?;
    }
    f.sync_all().map_err(failed("sync", tmp))?;
    fs::rename(tmp, path).map_err(failed("rename", tmp))?;
    sync_dir(parent(path))
}

/// Makes the creations, renames and removals of entries in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed("sync directory", dir))
}

/// Removes `path` durably; a file already gone is no error (and needs no sync).
pub fn remove(path: &Path) -> Result<(), DurableError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(failed("remove", path)(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn replace_swaps_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tmp) = (dir.path().join("f"), dir.path().join(".f.tmp"));
        fs::write(&path, b"old").unwrap();
        replace(&path, &tmp, b"new", Some(0o640)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(!tmp.exists());
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
        let err = replace(
            &dir.path().join("no/such"),
            &dir.path().join("no/tmp"),
            b"",
            None,
        )
        .unwrap_err();
        assert_eq!(err.op, "create");
    }
}
