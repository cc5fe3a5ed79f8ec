//! Installing the plugin on the host: the `bridgenet` binary into `--cni-bin-dir`, and a
//! `{"type":"bridgenet"}` entry appended to the cluster's primary conflist in `--cni-conf-dir`
//! (chaining after the primary CNI), removed again on uninstall.
//!
//! Never leave a node unable to start pods: every write is temp file + fsync + rename, a file
//! that does not parse is left alone, and the primary's own entries are never touched.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Plugin type (and binary name).
pub const PLUGIN_TYPE: &str = "bridgenet";

/// Errors of installing.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// No conflist to chain into.
    #[error(
        "no .conflist in {0}: bridgenet chains after the cluster's primary CNI; install the primary first (or use bridgenet as a Multus delegate)"
    )]
    NoPrimary(PathBuf),
    /// The runtime uses a single-plugin config, which cannot chain.
    #[error(
        "the container runtime uses {0}, a single-plugin config: bridgenet can only chain into a .conflist; convert the primary CNI's config to a conflist, or use bridgenet as a Multus delegate"
    )]
    PrimaryNotAList(PathBuf),
    /// The primary conflist does not parse.
    #[error("{path} is not a valid conflist ({reason}); left untouched")]
    BadConflist {
        /// Which file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { op, path, source }
}

/// Writes `bytes` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A leading dot and no .conf/.conflist/.json suffix: runtimes never load the temp file.
    let tmp = dir.join(format!(".{name}.bridgenet-tmp"));
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("chmod", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", &tmp))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// Copies the plugin binary into the bin dir (atomically: a runtime executing the old binary at
/// that moment keeps its inode). Skips the copy when the content is identical.
pub fn install_binary(source: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    fs::create_dir_all(bin_dir).map_err(io("create", bin_dir))?;
    let dest = bin_dir.join(PLUGIN_TYPE);
    let bytes = fs::read(source).map_err(io("read", source))?;
    if fs::read(&dest).is_ok_and(|old| old == bytes) {
        return Ok(dest);
    }
    write_atomic(&dest, &bytes, 0o755)?;
    Ok(dest)
}

/// The conflist the runtime uses: the first of the `.conf`, `.conflist` and `.json` files in
/// lexical order (what libcni and containerd pick). Chaining into any other file would be
/// silently ignored, so a single-plugin config in first place is an error.
pub fn primary_conflist(conf_dir: &Path) -> Result<PathBuf, InstallError> {
    let mut files: Vec<PathBuf> = fs::read_dir(conf_dir)
        .map_err(io("list", conf_dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
        })
        .collect();
    files.sort();
    let first = files
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoPrimary(conf_dir.to_owned()))?;
    let is_list = first.extension().is_some_and(|e| e == "conflist")
        || (first.extension().is_some_and(|e| e == "json")
            && read_conflist(&first).is_ok_and(|v| v.get("plugins").is_some()));
    if is_list {
        Ok(first)
    } else {
        Err(InstallError::PrimaryNotAList(first))
    }
}

/// Our entry for the chain.
pub fn plugin_entry(socket: &Path) -> Value {
    json!({"type": PLUGIN_TYPE, "socket": socket})
}

/// Returns the conflist with our entry appended (or updated in place); `None` when it is
/// already exactly right.
pub fn chain_into(conflist: &Value, socket: &Path) -> Result<Option<Value>, String> {
    let mut out = conflist.clone();
    let plugins = out
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("no \"plugins\" list")?;
    let entry = plugin_entry(socket);
    let ours: Vec<usize> = plugins
        .iter()
        .enumerate()
        .filter(|(_, p)| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE))
        .map(|(i, _)| i)
        .collect();
    match ours.as_slice() {
        [i] if plugins[*i] == entry && *i == plugins.len() - 1 => return Ok(None),
        _ => {
            plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
            plugins.push(entry);
        }
    }
    Ok(Some(out))
}

/// Returns the conflist without our entries; `None` when there were none.
pub fn unchain(conflist: &Value) -> Option<Value> {
    let mut out = conflist.clone();
    let plugins = out.get_mut("plugins")?.as_array_mut()?;
    let before = plugins.len();
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    (plugins.len() != before).then_some(out)
}

fn read_conflist(path: &Path) -> Result<Value, InstallError> {
    let text = fs::read(path).map_err(io("read", path))?;
    serde_json::from_slice(&text).map_err(|e| InstallError::BadConflist {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Chains bridgenet into the primary conflist. Idempotent; returns whether the file changed.
pub fn install_config(conf_dir: &Path, socket: &Path) -> Result<bool, InstallError> {
    let path = primary_conflist(conf_dir)?;
    let conflist = read_conflist(&path)?;
    match chain_into(&conflist, socket).map_err(|reason| InstallError::BadConflist {
        path: path.clone(),
        reason,
    })? {
        None => Ok(false),
        Some(new) => {
            let mode = fs::metadata(&path).map_or(0o644, |m| m.permissions().mode() & 0o777);
            let mut text = serde_json::to_vec_pretty(&new).unwrap_or_default();
            text.push(b'\n');
            write_atomic(&path, &text, mode)?;
            tracing::info!(path = %path.display(), "chained bridgenet into the primary CNI configuration");
            Ok(true)
        }
    }
}

/// Removes bridgenet from every conflist in the directory (the binary stays, so that a DEL
/// for a pod attached earlier still finds it).
pub fn uninstall_config(conf_dir: &Path) -> Result<usize, InstallError> {
    let mut changed = 0;
    for entry in fs::read_dir(conf_dir)
        .map_err(io("list", conf_dir))?
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "conflist") {
            continue;
        }
        let Ok(conflist) = read_conflist(&path) else {
            continue;
        };
        if let Some(new) = unchain(&conflist) {
            let mode = fs::metadata(&path).map_or(0o644, |m| m.permissions().mode() & 0o777);
            let mut text = serde_json::to_vec_pretty(&new).unwrap_or_default();
            text.push(b'\n');
            write_atomic(&path, &text, mode)?;
            changed += 1;
        }
    }
    Ok(changed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn primary() -> Value {
        json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ]})
    }

    #[test]
    fn chains_once_and_unchains() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("99-other.conflist"), b"{}").unwrap();
        std::fs::write(
            dir.path().join("10-primary.conflist"),
            primary().to_string(),
        )
        .unwrap();
        std::fs::write(dir.path().join("20-single.conf"), b"{}").unwrap();
        std::fs::write(dir.path().join("README"), b"not a config").unwrap();
        let socket = Path::new("/run/bridgenet/cni.sock");
        assert!(install_config(dir.path(), socket).unwrap());
        assert!(!install_config(dir.path(), socket).unwrap(), "idempotent");
        let after: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("10-primary.conflist")).unwrap())
                .unwrap();
        let plugins = after["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[0], primary()["plugins"][0], "primary untouched");
        assert_eq!(plugins[2]["type"], "bridgenet");
        assert_eq!(plugins[2]["socket"], "/run/bridgenet/cni.sock");
        // A new socket path updates our entry in place, still once.
        assert!(install_config(dir.path(), Path::new("/x.sock")).unwrap());
        let after: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("10-primary.conflist")).unwrap())
                .unwrap();
        assert_eq!(after["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(uninstall_config(dir.path()).unwrap(), 1);
        let restored: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("10-primary.conflist")).unwrap())
                .unwrap();
        assert_eq!(restored, primary());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_chain_into() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            install_config(dir.path(), Path::new("/s")),
            Err(InstallError::NoPrimary(_))
        ));
        // The runtime would use the single-plugin .conf: chaining elsewhere would do nothing.
        std::fs::write(dir.path().join("05-single.conf"), b"{}").unwrap();
        std::fs::write(
            dir.path().join("10-primary.conflist"),
            primary().to_string(),
        )
        .unwrap();
        assert!(matches!(
            install_config(dir.path(), Path::new("/s")),
            Err(InstallError::PrimaryNotAList(_))
        ));
        std::fs::remove_file(dir.path().join("05-single.conf")).unwrap();
        std::fs::remove_file(dir.path().join("10-primary.conflist")).unwrap();
        std::fs::write(dir.path().join("10-broken.conflist"), b"{not json").unwrap();
        assert!(matches!(
            install_config(dir.path(), Path::new("/s")),
            Err(InstallError::BadConflist { .. })
        ));
        assert_eq!(
            std::fs::read(dir.path().join("10-broken.conflist")).unwrap(),
            b"{not json"
        );
    }

    #[test]
    fn installs_binary_atomically_and_skips_identical() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src-bin");
        std::fs::write(&src, b"\x7fELF...").unwrap();
        let dest = install_binary(&src, &dir.path().join("bin")).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"\x7fELF...");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let before = std::fs::metadata(&dest).unwrap().modified().unwrap();
        install_binary(&src, &dir.path().join("bin")).unwrap();
        assert_eq!(
            std::fs::metadata(&dest).unwrap().modified().unwrap(),
            before
        );
    }
}
