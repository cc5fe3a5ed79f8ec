//! Installing the plugin on the host: the `bridgenet` binary into `--cni-bin-dir`, and a
//! `{"type":"bridgenet"}` entry appended to the cluster's primary CNI configuration in
//! `--cni-conf-dir` (chaining after the primary CNI), removed again on uninstall.
//!
//! The primary configuration is the file the container runtime loads: the first `.conf`,
//! `.conflist` or `.json` in byte order of the names (libcni's `ConfFiles` + sort, as containerd
//! and CRI-O use it). A conflist gets our entry appended. A single-plugin config (a bare plugin
//! object, usually `NN-name.conf`) cannot chain, so it is converted, as Multus and Istio's CNI
//! installer do: the equivalent conflist — exactly what libcni's `ConfListFromConf` builds in
//! memory when it loads a `.conf` — plus our entry is written to `NN-name.conflist`, and the
//! original is moved, bytes, mode and inode untouched, to `NN-name.conf.bridgenet-orig`, a name
//! no runtime loads (the `.conf` cannot stay: `NN-name.conf` sorts before `NN-name.conflist` and
//! would keep winning). Uninstall copies the original back and removes the generated conflist.
//!
//! Never leave a node unable to start pods: every write is temp file + fsync + rename, every
//! step is ordered so that a crash at any point leaves a valid primary loadable (see
//! [`install_config`] and [`uninstall_config`]), a file that does not parse is left alone, the
//! primary's own entries are never touched, and nothing is chained into a configuration whose
//! `cniVersion` the plugin would refuse (every pod ADD on the node would fail).
//!
//! This module reads the directory and orders the steps; the JSON transforms are in
//! [`conflist`], the durable writes in [`crate::durable`].

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cni::types::SUPPORTED_VERSIONS;
use crate::durable::{self, DurableError};

pub mod conflist;

pub use conflist::ORIGINAL_SUFFIX;
use conflist::{
    chain_into, chained_conversion, check_version, convert_single, converted_from, generated_path,
    has_entry, kept_path, unchain,
};

/// Plugin type (and binary name).
pub const PLUGIN_TYPE: &str = "bridgenet";

/// Extensions libcni (and so containerd and CRI-O) loads from the configuration directory.
const LOADABLE: [&str; 3] = ["conf", "conflist", "json"];

/// Why chaining bridgenet into (or out of) the host's CNI configuration failed.
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
    /// No configuration to chain into.
    #[error(
        "no CNI configuration (.conf, .conflist or .json) in {0}: bridgenet chains after the cluster's primary CNI; install the primary first (or use bridgenet as a Multus delegate)"
    )]
    NoPrimary(PathBuf),
    /// The primary configuration does not parse, or is neither a conflist nor a plugin config.
    #[error("{path} is not a valid CNI configuration ({reason}); left untouched")]
    BadConflist {
        /// Which file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// The primary's `cniVersion` is one the plugin refuses: chained, every pod ADD would fail.
    #[error(
        "{path} has cniVersion {version:?}, which the bridgenet plugin does not accept (it accepts {supported}); not chained, so pods on this node keep starting, without bridgenet networks. Use a primary configuration of one of those versions, or bridgenet as a Multus delegate",
        supported = SUPPORTED_VERSIONS.join(", ")
    )]
    UnsupportedVersion {
        /// Which file.
        path: PathBuf,
        /// Its `cniVersion` (empty when absent).
        version: String,
    },
    /// Converting a single-plugin config would overwrite a file bridgenet did not write, or
    /// leave the runtime loading some other file.
    #[error(
        "cannot convert the single-plugin config {original} into {generated}: {reason}; left untouched (convert it into a conflist by hand, or use bridgenet as a Multus delegate)"
    )]
    ConversionBlocked {
        /// The single-plugin config.
        original: PathBuf,
        /// The conflist it would become.
        generated: PathBuf,
        /// Why not.
        reason: String,
    },
}

impl From<DurableError> for InstallError {
    fn from(e: DurableError) -> Self {
        InstallError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { op, path, source }
}

/// Writes `bytes` to `path` durably with `mode`, through a temporary file runtimes never load:
/// a leading dot and no `.conf`/`.conflist`/`.json` suffix.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.bridgenet-tmp"));
    Ok(durable::replace(path, &tmp, bytes, Some(mode))?)
}

/// The bytes of `path`; `None` when there is no such file.
fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, InstallError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o777)
}

fn write_json(path: &Path, value: &Value, mode: u32) -> Result<(), InstallError> {
    let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
    text.push(b'\n');
    write_atomic(path, &text, mode)
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

fn is_loadable(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| LOADABLE.contains(&e))
}

/// The files of `conf_dir` a runtime may load, in the order it considers them.
fn loadable(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut files: Vec<PathBuf> = fs::read_dir(conf_dir)
        .map_err(io("list", conf_dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_loadable(p) && !p.is_dir())
        .collect();
    // Names in one directory: PathBuf order is byte order of the names, like Go's sort.Strings.
    files.sort();
    Ok(files)
}

/// The configuration the runtime uses: the first of the `.conf`, `.conflist` and `.json` files
/// in lexical order (what libcni and containerd pick). Chaining into any other file would be
/// silently ignored.
pub fn primary_config(conf_dir: &Path) -> Result<PathBuf, InstallError> {
    loadable(conf_dir)?
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoPrimary(conf_dir.to_owned()))
}

fn read_json(path: &Path) -> Result<(Vec<u8>, Value), InstallError> {
    let bytes = fs::read(path).map_err(io("read", path))?;
    let value = serde_json::from_slice(&bytes).map_err(|e| InstallError::BadConflist {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((bytes, value))
}

/// A single-plugin config (a JSON object without `plugins`), parsed; `None` for anything else.
fn read_single(path: &Path) -> Option<Value> {
    read_json(path)
        .ok()
        .map(|(_, v)| v)
        .filter(|v| v.is_object() && v.get("plugins").is_none())
}

/// Whether the conflist at `original`'s generated name was written by us: apart from our
/// entry it is the conversion of the kept original (a finished conversion), or it carries our
/// entry and is the conversion of `original`'s current content (`current`; a conversion that
/// stopped before the original was moved aside). Anything else is someone else's file: the
/// primary CNI's own conflist of that name, or one edited by hand.
fn generated_is_ours(generated: &Value, original: &Path, current: Option<&Value>) -> bool {
    current.is_some_and(|c| has_entry(generated) && converted_from(generated, c))
        || read_single(&kept_path(original)).is_some_and(|kept| converted_from(generated, &kept))
}

/// Chains bridgenet into the primary configuration, converting a single-plugin config into a
/// conflist first. Idempotent; returns whether anything changed. Run again periodically by the
/// agent, so a primary CNI that rewrites its file gets chained (and its new content converted)
/// again.
pub fn install_config(conf_dir: &Path, socket: &Path) -> Result<bool, InstallError> {
    let first = primary_config(conf_dir)?;
    let (_, conf) = read_json(&first)?;
    if conf.get("plugins").is_some() {
        if let Some(original) = rewritten_original(&first, &conf) {
            return convert_or_withdraw(conf_dir, &original, socket);
        }
        return chain_list(&first, &conf, socket);
    }
    if first.extension().is_some_and(|e| e == "conflist") {
        return Err(InstallError::BadConflist {
            path: first,
            reason: "no \"plugins\" list".into(),
        });
    }
    convert_or_withdraw(conf_dir, &first, socket)
}

/// [`convert`]; when the original's content cannot be chained (a refused `cniVersion`, not a
/// plugin config) but is a JSON object, its CNI wants exactly that loaded: a conversion of its
/// earlier content must neither shadow it (a `.json` sorts after its generated conflist) nor
/// come back should it go, so that conversion is withdrawn. An original that is not JSON at all
/// is left with everything around it untouched.
fn convert_or_withdraw(
    conf_dir: &Path,
    original: &Path,
    socket: &Path,
) -> Result<bool, InstallError> {
    match convert(conf_dir, original, socket) {
        Err(e @ (InstallError::UnsupportedVersion { .. } | InstallError::BadConflist { .. })) => {
            if let Some(current) = read_single(original) {
                let generated = generated_path(original);
                if let Ok((_, g)) = read_json(&generated)
                    && generated_is_ours(&g, original, Some(&current))
                {
                    // G first: from here on O is what the runtime loads; K goes after.
                    durable::remove(&generated)?;
                    tracing::warn!(original = %original.display(), error = %e, "withdrew the conversion of the original's earlier content");
                }
                durable::remove(&kept_path(original))?;
            }
            Err(e)
        }
        r => r,
    }
}

/// Our generated `NN-name.conflist` sorts before a `NN-name.json` original (`c` < `j`), so
/// when the primary CNI writes its `.json` again the runtime keeps loading our conversion of
/// the old content. That original, when `first` is our conversion of it (or of its kept copy),
/// is to be converted again.
fn rewritten_original(first: &Path, conf: &Value) -> Option<PathBuf> {
    if first.extension()? != "conflist" {
        return None;
    }
    let original = first.with_extension("json");
    let current = read_single(&original)?;
    generated_is_ours(conf, &original, Some(&current)).then_some(original)
}

fn chain_list(path: &Path, conf: &Value, socket: &Path) -> Result<bool, InstallError> {
    if let Err(e) = check_version(path, conf) {
        // An entry chained earlier (by hand, or by a version that did not check) fails every
        // pod ADD on the node: take it out.
        if let Some(unchained) = unchain(conf) {
            write_json(path, &unchained, mode_of(path))?;
            tracing::warn!(path = %path.display(), error = %e, "removed bridgenet from a configuration whose cniVersion it does not accept");
        }
        return Err(e);
    }
    match chain_into(conf, socket).map_err(|reason| InstallError::BadConflist {
        path: path.to_owned(),
        reason,
    })? {
        None => Ok(false),
        Some(new) => {
            write_json(path, &new, mode_of(path))?;
            tracing::info!(path = %path.display(), "chained bridgenet into the primary CNI configuration");
            Ok(true)
        }
    }
}

/// Converts the single-plugin config `original` (O) into its generated conflist (G) chained
/// with bridgenet, keeping O as K (`O.bridgenet-orig`).
///
/// The steps, and what the runtime loads if the agent dies right after each:
/// 0. start: O; or O, K and G when O's CNI rewrote O after an earlier conversion → O
/// 1. write G (temp + fsync + rename) → O for a `.conf` (sorts before G), G for a `.json`
///    (sorts after it); both are valid and describe the same primary network
/// 2. rename O → K (replacing an older K; directory fsynced) → G
///
/// A rerun after step 1 finds G carrying our entry and converted from O, so G is ours and it
/// goes on with step 2; after step 2 the primary is G, already chained: nothing to do.
fn convert(conf_dir: &Path, original: &Path, socket: &Path) -> Result<bool, InstallError> {
    let (bytes, plugin) = read_json(original)?;
    let list = convert_single(&plugin).map_err(|reason| InstallError::BadConflist {
        path: original.to_owned(),
        reason,
    })?;
    check_version(original, &list)?;
    let generated = generated_path(original);
    let blocked = |reason: String| InstallError::ConversionBlocked {
        original: original.to_owned(),
        generated: generated.clone(),
        reason,
    };
    // With O moved aside, the runtime must pick G: no other file may sort before it.
    let mut after = loadable(conf_dir)?;
    after.retain(|p| p != original);
    if !after.contains(&generated) {
        after.push(generated.clone());
        after.sort();
    }
    if let Some(other) = after.first().filter(|&p| *p != generated) {
        return Err(blocked(format!(
            "{} would sort before it and be loaded instead",
            other.display()
        )));
    }
    let existing = match read_if_exists(&generated)? {
        Some(b) => Some(
            serde_json::from_slice::<Value>(&b)
                .ok()
                .filter(|g| generated_is_ours(g, original, Some(&plugin)))
                .ok_or_else(|| {
                    blocked("that file exists and was not written by bridgenet".into())
                })?,
        ),
        None => None,
    };
    let chained = chained_conversion(&list, socket);
    let mode = mode_of(original);
    if existing.as_ref() != Some(&chained) {
        write_json(&generated, &chained, mode)?;
    }
    let kept = kept_path(original);
    fs::rename(original, &kept).map_err(io("rename", original))?;
    durable::sync_dir(conf_dir)?;
    settle_moved(original, &generated, &kept, &bytes, socket, mode)?;
    tracing::info!(
        original = %original.display(),
        generated = %generated.display(),
        kept = %kept.display(),
        "converted the single-plugin primary CNI configuration into a conflist chained with bridgenet"
    );
    Ok(true)
}

/// The primary CNI may rewrite O between our read and the rename, so K may hold content G was
/// not made from (`converted`). Then G follows K; and when that content cannot be converted,
/// K goes back to O (first, so a config stays loadable) and G is withdrawn: the runtime loads
/// what the primary CNI wrote, as it would without bridgenet.
fn settle_moved(
    original: &Path,
    generated: &Path,
    kept: &Path,
    converted: &[u8],
    socket: &Path,
    mode: u32,
) -> Result<(), InstallError> {
    let moved = fs::read(kept).map_err(io("read", kept))?;
    if moved == converted {
        return Ok(());
    }
    let list = serde_json::from_slice::<Value>(&moved)
        .ok()
        .and_then(|p| convert_single(&p).ok())
        .filter(|l| check_version(kept, l).is_ok());
    if let Some(list) = list {
        tracing::info!(original = %original.display(), "the original changed while it was converted; converted its new content");
        return write_json(generated, &chained_conversion(&list, socket), mode);
    }
    if !original.exists() {
        fs::rename(kept, original).map_err(io("rename", kept))?;
        durable::sync_dir(original.parent().unwrap_or(Path::new(".")))?;
    }
    durable::remove(generated)?;
    Err(InstallError::BadConflist {
        path: original.to_owned(),
        reason: "rewritten during the conversion into content that cannot be chained; put back"
            .into(),
    })
}

/// Removes bridgenet from the directory: every converted single-plugin config gets its
/// original back byte for byte and loses the generated conflist; every other conflist loses
/// our entry. The binary stays, so that a DEL for a pod attached earlier still finds it.
/// Goes on past a file it cannot fix (logged) and then returns the first error; otherwise the
/// number of configurations changed.
pub fn uninstall_config(conf_dir: &Path) -> Result<usize, InstallError> {
    let mut changed = 0;
    let mut errors = Vec::new();
    let mut names: Vec<PathBuf> = fs::read_dir(conf_dir)
        .map_err(io("list", conf_dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    names.sort();
    for kept in names.iter().filter(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(ORIGINAL_SUFFIX))
    }) {
        match restore(kept) {
            Ok(n) => changed += n,
            Err(e) => errors.push(e),
        }
    }
    // Before unchaining: a `.json` original sorts after its generated conflist, and that
    // conflist is recognised as ours by the entry unchaining would remove.
    for path in loadable(conf_dir)? {
        if let Some(single) = read_single(&path) {
            match withdraw_interrupted(&path, &single) {
                Ok(n) => changed += n,
                Err(e) => errors.push(e),
            }
        }
    }
    for path in loadable(conf_dir)? {
        match unchain_file(&path) {
            Ok(n) => changed += n,
            Err(e) => errors.push(e),
        }
    }
    for e in &errors {
        tracing::warn!(error = %e, "removing bridgenet from the CNI configuration");
    }
    errors.into_iter().next().map_or(Ok(changed), Err)
}

/// Undoes one conversion, given its kept original K (O is K's name without the suffix, G the
/// generated conflist). The steps, and what the runtime loads if the agent dies right after
/// each:
/// 0. start: K, G → G
/// 1. copy K to O (temp + fsync + rename; skipped when O exists: its CNI wrote it after the
///    conversion, and that content is the newer one) → O for a `.conf`, G for a `.json`; valid
/// 2. remove G → O
/// 3. remove K → O
///
/// A rerun after step 1 or 2 finds K and O and finishes. Without a G of ours, K is only
/// removed when O exists (its CNI wrote a newer one); otherwise (G replaced by the primary
/// CNI's own conflist of that name, edited by hand, or gone) K is left in place with a
/// warning: bringing it back could revive a configuration somebody retired, and deleting it
/// could destroy the last good copy.
fn restore(kept: &Path) -> Result<usize, InstallError> {
    let Some(name) = kept
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(ORIGINAL_SUFFIX))
    else {
        return Ok(0);
    };
    let original = kept.with_file_name(name);
    if !is_loadable(&original) {
        return Ok(0);
    }
    let bytes = fs::read(kept).map_err(io("read", kept))?;
    let generated = generated_path(&original);
    let generated_conf =
        read_if_exists(&generated)?.map(|b| serde_json::from_slice::<Value>(&b).ok());
    let current = read_single(&original);
    match generated_conf {
        Some(Some(g)) if generated_is_ours(&g, &original, current.as_ref()) => {
            if !original.exists() {
                write_atomic(&original, &bytes, mode_of(kept))?;
            }
            durable::remove(&generated)?;
            durable::remove(kept)?;
            tracing::info!(original = %original.display(), generated = %generated.display(), "restored the single-plugin CNI configuration");
            Ok(1)
        }
        _ if original.exists() => {
            durable::remove(kept)?;
            Ok(0)
        }
        _ => {
            tracing::warn!(
                kept = %kept.display(),
                generated = %generated.display(),
                "left a kept original in place: its generated conflist is gone or no longer the one bridgenet wrote; delete it once the CNI configuration is as wanted"
            );
            Ok(0)
        }
    }
}

/// A conversion stopped after writing G and before moving O aside leaves O and G but no K:
/// G is withdrawn, O (the primary's file) stays.
fn withdraw_interrupted(original: &Path, single: &Value) -> Result<usize, InstallError> {
    let generated = generated_path(original);
    if generated == original || kept_path(original).exists() {
        return Ok(0);
    }
    let ours =
        read_json(&generated).is_ok_and(|(_, g)| has_entry(&g) && converted_from(&g, single));
    if !ours {
        return Ok(0);
    }
    durable::remove(&generated)?;
    tracing::info!(generated = %generated.display(), "removed the conflist of an interrupted conversion");
    Ok(1)
}

fn unchain_file(path: &Path) -> Result<usize, InstallError> {
    let Ok((_, conf)) = read_json(path) else {
        return Ok(0);
    };
    match unchain(&conf) {
        Some(new) => {
            write_json(path, &new, mode_of(path))?;
            Ok(1)
        }
        None => Ok(0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::conflist::plugin_entry;
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    const SOCKET: &str = "/run/bridgenet/cni.sock";

    fn primary() -> Value {
        json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ]})
    }

    /// A hand-written single-plugin config, laid out the way no serializer would write it, so
    /// that a restore re-serializing it instead of copying its bytes fails the comparison.
    const SINGLE: &[u8] = b"{\n  \"cniVersion\":\"0.4.0\", \"name\" : \"containerd-net\",\n\t\"type\": \"bridge\", \"bridge\": \"cni0\", \"isGateway\": true,\n  \"ipam\": {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \"10.88.0.0/16\"}]]}\n}\n";

    /// Every file of the directory with its content: the whole state a runtime could see.
    fn listing(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        listing(dir).into_keys().collect()
    }

    fn read(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    /// What the runtime would load, checked to be something it can load: a conflist with a
    /// non-empty plugin list, or a plugin config with a type and a name.
    fn runtime_pick(dir: &Path) -> (String, Value) {
        let path = primary_config(dir).unwrap();
        let conf = read(&path);
        let valid = match conf.get("plugins") {
            Some(p) => p.as_array().is_some_and(|p| !p.is_empty()) && conf["name"].is_string(),
            None => conf["type"].is_string() && conf["name"].is_string(),
        };
        assert!(valid, "{} is not loadable: {conf}", path.display());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        (name, conf)
    }

    fn single_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("10-containerd-net.conf"), SINGLE).unwrap();
        fs::set_permissions(
            dir.path().join("10-containerd-net.conf"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        // Loaded by nobody while the primary sorts first; must stay exactly as it is.
        fs::write(dir.path().join("99-other.conflist"), primary().to_string()).unwrap();
        dir
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
        let socket = Path::new(SOCKET);
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
        assert_eq!(
            fs::read(dir.path().join("20-single.conf")).unwrap(),
            b"{}",
            "a .conf the runtime does not load is nobody's business"
        );
    }

    #[test]
    fn refuses_what_it_cannot_chain_into() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            install_config(dir.path(), Path::new("/s")),
            Err(InstallError::NoPrimary(_))
        ));
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
    fn malformed_single_plugin_config_is_left_untouched() {
        for (body, says) in [
            (&b"{\"type\": \"bridge\", \"name\": "[..], "EOF"),
            (b"{}", "no \"type\""),
            (
                b"{\"cniVersion\": \"1.0.0\", \"type\": \"bridge\"}",
                "no \"name\"",
            ),
            (b"[1, 2]", "not a JSON object"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("05-single.conf"), body).unwrap();
            fs::write(
                dir.path().join("10-primary.conflist"),
                primary().to_string(),
            )
            .unwrap();
            let before = listing(dir.path());
            let err = install_config(dir.path(), Path::new(SOCKET)).unwrap_err();
            assert!(
                matches!(&err, InstallError::BadConflist { path, .. } if path.ends_with("05-single.conf")),
                "{err}"
            );
            let text = err.to_string();
            assert!(
                text.contains(says) && text.contains("left untouched"),
                "{text}"
            );
            assert_eq!(listing(dir.path()), before, "nothing written for {body:?}");
            assert_eq!(uninstall_config(dir.path()).unwrap(), 0);
            assert_eq!(listing(dir.path()), before);
        }
    }

    #[test]
    fn conversion_has_the_runtime_shape() {
        let plugin: Value = serde_json::from_slice(SINGLE).unwrap();
        let list = convert_single(&plugin).unwrap();
        assert_eq!(
            list,
            json!({"cniVersion": "0.4.0", "name": "containerd-net", "plugins": [{
                "type": "bridge", "bridge": "cni0", "isGateway": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]},
            }]})
        );
        assert!(
            convert_single(&primary()).is_err(),
            "a conflist is not converted"
        );
    }

    #[test]
    fn converts_a_single_plugin_conf_and_the_runtime_loads_the_conflist() {
        let dir = single_dir();
        let other = fs::read(dir.path().join("99-other.conflist")).unwrap();
        assert!(install_config(dir.path(), Path::new(SOCKET)).unwrap());
        assert_eq!(
            names(dir.path()),
            [
                "10-containerd-net.conf.bridgenet-orig",
                "10-containerd-net.conflist",
                "99-other.conflist"
            ],
            "the .conf is out of the runtime's way, nothing else is left behind"
        );
        let (name, loaded) = runtime_pick(dir.path());
        assert_eq!(name, "10-containerd-net.conflist");
        assert_eq!(
            loaded,
            json!({"cniVersion": "0.4.0", "name": "containerd-net", "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}},
                {"type": "bridgenet", "socket": SOCKET},
            ]})
        );
        let kept = dir.path().join("10-containerd-net.conf.bridgenet-orig");
        assert_eq!(fs::read(&kept).unwrap(), SINGLE);
        for file in [&kept, &dir.path().join("10-containerd-net.conflist")] {
            let mode = fs::metadata(file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} keeps the original's mode", file.display());
        }
        assert_eq!(
            fs::read(dir.path().join("99-other.conflist")).unwrap(),
            other
        );
    }

    #[test]
    fn installing_a_conversion_twice_changes_nothing() {
        let dir = single_dir();
        assert!(install_config(dir.path(), Path::new(SOCKET)).unwrap());
        let once = listing(dir.path());
        assert!(!install_config(dir.path(), Path::new(SOCKET)).unwrap());
        assert_eq!(listing(dir.path()), once);
        // A new socket path changes our entry, nothing else.
        assert!(install_config(dir.path(), Path::new("/x.sock")).unwrap());
        let conf = read(&dir.path().join("10-containerd-net.conflist"));
        assert_eq!(
            conf["plugins"][1],
            json!({"type": "bridgenet", "socket": "/x.sock"})
        );
        assert_eq!(conf["plugins"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn uninstall_restores_the_original_bytes() {
        let dir = single_dir();
        let before = listing(dir.path());
        install_config(dir.path(), Path::new(SOCKET)).unwrap();
        assert_eq!(uninstall_config(dir.path()).unwrap(), 1);
        assert_eq!(
            listing(dir.path()),
            before,
            "byte for byte, nothing left behind"
        );
        let mode = fs::metadata(dir.path().join("10-containerd-net.conf"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(uninstall_config(dir.path()).unwrap(), 0, "idempotent");
        assert_eq!(listing(dir.path()), before);
    }

    type Step<'a> = dyn Fn(&Path) + 'a;

    /// Every state a crash can leave, rebuilt by doing the steps of install or uninstall up to
    /// that point by hand: the runtime can load something at each, and both install and
    /// uninstall converge from each.
    #[test]
    fn a_crash_between_steps_converges() {
        let socket = Path::new(SOCKET);
        let conf = |d: &Path| d.join("10-containerd-net.conf");
        let conflist = |d: &Path| d.join("10-containerd-net.conflist");
        let kept = |d: &Path| d.join("10-containerd-net.conf.bridgenet-orig");
        let original_state = listing(single_dir().path());
        let installed_state = {
            let dir = single_dir();
            install_config(dir.path(), socket).unwrap();
            listing(dir.path())
        };
        let generated = installed_state["10-containerd-net.conflist"].clone();
        // Install, stopped after step 1 (conflist written, original not yet moved).
        let install_step1 = |d: &Path| fs::write(conflist(d), &generated).unwrap();
        // Uninstall, stopped after step 1 (original copied back) or step 2 (conflist removed).
        let uninstall_step1 = |d: &Path| {
            install_config(d, socket).unwrap();
            fs::copy(kept(d), conf(d)).unwrap();
        };
        let uninstall_step2 = |d: &Path| {
            uninstall_step1(d);
            fs::remove_file(conflist(d)).unwrap();
        };
        let crashes: [(&str, &Step); 3] = [
            ("install after writing the conflist", &install_step1),
            (
                "uninstall after copying the original back",
                &uninstall_step1,
            ),
            ("uninstall after removing the conflist", &uninstall_step2),
        ];
        for (what, crash) in crashes {
            for then_install in [true, false] {
                let dir = single_dir();
                crash(dir.path());
                let (name, _) = runtime_pick(dir.path());
                assert_eq!(
                    name, "10-containerd-net.conf",
                    "{what}: the .conf sorts first"
                );
                if then_install {
                    assert!(install_config(dir.path(), socket).unwrap(), "{what}");
                    assert_eq!(listing(dir.path()), installed_state, "{what}, then install");
                    assert!(!install_config(dir.path(), socket).unwrap(), "{what}");
                } else {
                    uninstall_config(dir.path()).unwrap();
                    assert_eq!(
                        listing(dir.path()),
                        original_state,
                        "{what}, then uninstall"
                    );
                }
            }
        }
        // Install, stopped after step 2 is the installed state; uninstall after step 3 the
        // original state: both covered above.
    }

    #[test]
    fn a_rewritten_original_is_converted_again_not_resurrected() {
        let dir = single_dir();
        install_config(dir.path(), Path::new(SOCKET)).unwrap();
        // The primary CNI's DaemonSet writes its config again, with new content.
        let rewritten = br#"{"cniVersion":"1.0.0","name":"containerd-net","type":"bridge","bridge":"cni1","ipam":{"type":"host-local"}}"#;
        fs::write(dir.path().join("10-containerd-net.conf"), rewritten).unwrap();
        let (name, _) = runtime_pick(dir.path());
        assert_eq!(name, "10-containerd-net.conf");
        assert!(install_config(dir.path(), Path::new(SOCKET)).unwrap());
        let (name, loaded) = runtime_pick(dir.path());
        assert_eq!(name, "10-containerd-net.conflist");
        assert_eq!(loaded["cniVersion"], "1.0.0");
        assert_eq!(loaded["plugins"][0]["bridge"], "cni1", "the new content");
        assert_eq!(loaded["plugins"][1]["type"], "bridgenet");
        assert!(!dir.path().join("10-containerd-net.conf").exists());
        uninstall_config(dir.path()).unwrap();
        assert_eq!(
            fs::read(dir.path().join("10-containerd-net.conf")).unwrap(),
            rewritten,
            "uninstall gives back what the primary CNI wrote last"
        );
        assert_eq!(
            names(dir.path()),
            ["10-containerd-net.conf", "99-other.conflist"]
        );

        // Rewritten and not yet converted again when uninstall comes: the newer content stays.
        install_config(dir.path(), Path::new(SOCKET)).unwrap();
        fs::write(dir.path().join("10-containerd-net.conf"), SINGLE).unwrap();
        uninstall_config(dir.path()).unwrap();
        assert_eq!(
            fs::read(dir.path().join("10-containerd-net.conf")).unwrap(),
            SINGLE
        );
        assert_eq!(
            names(dir.path()),
            ["10-containerd-net.conf", "99-other.conflist"]
        );
    }

    #[test]
    fn a_rewrite_that_cannot_be_chained_withdraws_the_old_conversion() {
        let refused =
            br#"{"cniVersion":"0.2.0","name":"containerd-net","type":"bridge","bridge":"cni9"}"#;
        // .conf: it sorts first and is loaded anyway; the stale conversion must not outlive it.
        let dir = single_dir();
        install_config(dir.path(), Path::new(SOCKET)).unwrap();
        fs::write(dir.path().join("10-containerd-net.conf"), refused).unwrap();
        assert!(matches!(
            install_config(dir.path(), Path::new(SOCKET)),
            Err(InstallError::UnsupportedVersion { .. })
        ));
        assert_eq!(
            names(dir.path()),
            ["10-containerd-net.conf", "99-other.conflist"]
        );
        assert_eq!(
            fs::read(dir.path().join("10-containerd-net.conf")).unwrap(),
            refused
        );
        // .json: the stale conversion sorts first and would keep shadowing the new content.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("10-net.json"), SINGLE).unwrap();
        install_config(dir.path(), Path::new(SOCKET)).unwrap();
        fs::write(dir.path().join("10-net.json"), refused).unwrap();
        assert_eq!(runtime_pick(dir.path()).0, "10-net.conflist");
        assert!(install_config(dir.path(), Path::new(SOCKET)).is_err());
        assert_eq!(names(dir.path()), ["10-net.json"]);
        assert_eq!(runtime_pick(dir.path()).1["bridge"], "cni9");
        // Not JSON: nothing around it is touched either.
        let dir = single_dir();
        install_config(dir.path(), Path::new(SOCKET)).unwrap();
        fs::write(dir.path().join("10-containerd-net.conf"), b"{half").unwrap();
        let before = listing(dir.path());
        assert!(install_config(dir.path(), Path::new(SOCKET)).is_err());
        assert_eq!(listing(dir.path()), before);
    }

    #[test]
    fn a_conflist_the_primary_writes_over_ours_is_theirs() {
        // E.g. a CNI upgrade that moves from NN-name.conf to NN-name.conflist.
        let dir = single_dir();
        install_config(dir.path(), Path::new(SOCKET)).unwrap();
        let theirs = serde_json::to_vec_pretty(&primary()).unwrap();
        fs::write(dir.path().join("10-containerd-net.conflist"), &theirs).unwrap();
        assert!(install_config(dir.path(), Path::new(SOCKET)).unwrap());
        let (name, loaded) = runtime_pick(dir.path());
        assert_eq!(name, "10-containerd-net.conflist");
        assert_eq!(
            unchain(&loaded).unwrap(),
            primary(),
            "chained like any conflist"
        );
        uninstall_config(dir.path()).unwrap();
        assert_eq!(
            names(dir.path()),
            [
                "10-containerd-net.conf.bridgenet-orig",
                "10-containerd-net.conflist",
                "99-other.conflist"
            ],
            "the old .conf is not brought back over the new conflist, nor its copy destroyed"
        );
        assert_eq!(
            read(&dir.path().join("10-containerd-net.conflist")),
            primary()
        );
    }

    #[test]
    fn a_single_plugin_json_is_converted_and_followed() {
        let dir = tempfile::tempdir().unwrap();
        let json_path = dir.path().join("10-net.json");
        fs::write(&json_path, SINGLE).unwrap();
        let before = listing(dir.path());
        assert!(install_config(dir.path(), Path::new(SOCKET)).unwrap());
        assert_eq!(
            names(dir.path()),
            ["10-net.conflist", "10-net.json.bridgenet-orig"]
        );
        assert_eq!(runtime_pick(dir.path()).0, "10-net.conflist");
        assert!(!install_config(dir.path(), Path::new(SOCKET)).unwrap());
        // Rewritten: 10-net.conflist sorts before 10-net.json and would shadow it for good.
        let rewritten =
            br#"{"cniVersion":"1.0.0","name":"n","type":"ptp","ipam":{"type":"host-local"}}"#;
        fs::write(&json_path, rewritten).unwrap();
        assert_eq!(runtime_pick(dir.path()).0, "10-net.conflist");
        assert!(install_config(dir.path(), Path::new(SOCKET)).unwrap());
        let (name, loaded) = runtime_pick(dir.path());
        assert_eq!(name, "10-net.conflist");
        assert_eq!(loaded["plugins"][0]["type"], "ptp");
        assert_eq!(
            names(dir.path()),
            ["10-net.conflist", "10-net.json.bridgenet-orig"]
        );
        uninstall_config(dir.path()).unwrap();
        assert_eq!(names(dir.path()), ["10-net.json"]);
        assert_eq!(fs::read(&json_path).unwrap(), rewritten);
        // And from the start again, for the original bytes.
        fs::write(&json_path, SINGLE).unwrap();
        install_config(dir.path(), Path::new(SOCKET)).unwrap();
        let generated = fs::read(dir.path().join("10-net.conflist")).unwrap();
        uninstall_config(dir.path()).unwrap();
        assert_eq!(listing(dir.path()), before);
        // A conversion stopped before moving the .json aside: the runtime already loads the
        // conflist, which sorts first; install finishes it, uninstall withdraws it.
        for then_install in [true, false] {
            fs::write(dir.path().join("10-net.conflist"), &generated).unwrap();
            assert_eq!(runtime_pick(dir.path()).0, "10-net.conflist");
            if then_install {
                install_config(dir.path(), Path::new(SOCKET)).unwrap();
                assert_eq!(
                    names(dir.path()),
                    ["10-net.conflist", "10-net.json.bridgenet-orig"]
                );
            }
            uninstall_config(dir.path()).unwrap();
            assert_eq!(listing(dir.path()), before, "then_install: {then_install}");
        }
    }

    #[test]
    fn a_conversion_that_would_not_be_loaded_or_would_overwrite_is_refused() {
        // Someone's own 10-containerd-net.conflist, loaded by nobody while the .conf sorts first.
        let dir = single_dir();
        fs::write(
            dir.path().join("10-containerd-net.conflist"),
            primary().to_string(),
        )
        .unwrap();
        let before = listing(dir.path());
        let err = install_config(dir.path(), Path::new(SOCKET)).unwrap_err();
        assert!(
            matches!(err, InstallError::ConversionBlocked { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("not written by bridgenet"),
            "{err}"
        );
        assert_eq!(listing(dir.path()), before);
        assert_eq!(uninstall_config(dir.path()).unwrap(), 0);
        assert_eq!(listing(dir.path()), before);

        // A loadable name between NN-name.conf and NN-name.conflist would win once the .conf
        // is gone.
        let dir = single_dir();
        fs::write(
            dir.path().join("10-containerd-net.conf.json"),
            primary().to_string(),
        )
        .unwrap();
        let before = listing(dir.path());
        let err = install_config(dir.path(), Path::new(SOCKET)).unwrap_err();
        assert!(err.to_string().contains("would sort before it"), "{err}");
        assert_eq!(listing(dir.path()), before);
    }

    #[test]
    fn versions_the_plugin_refuses_are_not_chained() {
        let dir = tempfile::tempdir().unwrap();
        let old = br#"{"cniVersion":"0.2.0","name":"cbr0","type":"flannel","delegate":{"isDefaultGateway":true}}"#;
        fs::write(dir.path().join("10-flannel.conf"), old).unwrap();
        let err = install_config(dir.path(), Path::new(SOCKET)).unwrap_err();
        assert!(
            matches!(&err, InstallError::UnsupportedVersion { version, .. } if version == "0.2.0"),
            "{err}"
        );
        assert!(
            err.to_string().contains("0.4.0"),
            "names what is accepted: {err}"
        );
        assert_eq!(names(dir.path()), ["10-flannel.conf"]);
        assert_eq!(fs::read(dir.path().join("10-flannel.conf")).unwrap(), old);

        // A conflist of such a version: not chained; an entry chained earlier is taken out.
        let dir = tempfile::tempdir().unwrap();
        let mut list = primary();
        list["cniVersion"] = json!("0.2.0");
        let path = dir.path().join("10-kindnet.conflist");
        fs::write(&path, list.to_string()).unwrap();
        assert!(matches!(
            install_config(dir.path(), Path::new(SOCKET)),
            Err(InstallError::UnsupportedVersion { .. })
        ));
        assert_eq!(read(&path), list);
        let mut chained = list.clone();
        chained["plugins"]
            .as_array_mut()
            .unwrap()
            .push(plugin_entry(Path::new(SOCKET)));
        fs::write(&path, chained.to_string()).unwrap();
        assert!(install_config(dir.path(), Path::new(SOCKET)).is_err());
        assert_eq!(read(&path), list);
    }

    #[test]
    fn an_original_rewritten_during_the_move_is_followed_or_put_back() {
        let socket = Path::new(SOCKET);
        let dir = single_dir();
        let (o, g, k) = (
            dir.path().join("10-containerd-net.conf"),
            dir.path().join("10-containerd-net.conflist"),
            dir.path().join("10-containerd-net.conf.bridgenet-orig"),
        );
        // G made from SINGLE, but the rename moved newer content.
        install_config(dir.path(), socket).unwrap();
        let newer = br#"{"cniVersion":"1.1.0","name":"containerd-net","type":"ptp"}"#;
        fs::write(&k, newer).unwrap();
        settle_moved(&o, &g, &k, SINGLE, socket, 0o644).unwrap();
        let (name, loaded) = runtime_pick(dir.path());
        assert_eq!(name, "10-containerd-net.conflist");
        assert_eq!(loaded["plugins"][0]["type"], "ptp");
        assert_eq!(loaded["cniVersion"], "1.1.0");

        // Newer content that cannot be chained: back where its CNI put it, G withdrawn.
        fs::write(&k, b"{broken").unwrap();
        assert!(settle_moved(&o, &g, &k, SINGLE, socket, 0o644).is_err());
        assert_eq!(
            names(dir.path()),
            ["10-containerd-net.conf", "99-other.conflist"]
        );
        assert_eq!(fs::read(&o).unwrap(), b"{broken");
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
