//! The pure half of installing: our entry in a conflist, chaining and unchaining it, the
//! conflist a single-plugin config converts into, and the names of the conversion's files.
//! Nothing here touches the disk; [`super`] reads and writes the files.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{InstallError, PLUGIN_TYPE};
use crate::cni::types::SUPPORTED_VERSIONS;

/// Appended to a converted single-plugin config's file name to keep the original until
/// uninstall. libcni loads only `.conf`, `.conflist` and `.json`, so no runtime reads it.
pub const ORIGINAL_SUFFIX: &str = ".bridgenet-orig";

/// Our entry for the chain.
pub fn plugin_entry(socket: &Path) -> Value {
    json!({"type": PLUGIN_TYPE, "socket": socket})
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

pub(super) fn has_entry(conflist: &Value) -> bool {
    conflist
        .get("plugins")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(is_ours))
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
        .filter(|(_, p)| is_ours(p))
        .map(|(i, _)| i)
        .collect();
    match ours.as_slice() {
        [i] if plugins[*i] == entry && *i == plugins.len() - 1 => return Ok(None),
        _ => {
            plugins.retain(|p| !is_ours(p));
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
    plugins.retain(|p| !is_ours(p));
    (plugins.len() != before).then_some(out)
}

/// The conflist equivalent to a single-plugin config: what libcni's `ConfListFromConf` builds
/// when a runtime loads a `.conf`. `cniVersion` and `name` move to the list; libcni puts them
/// back into each plugin's configuration when it runs the list, so the plugin sees what it saw.
pub fn convert_single(plugin: &Value) -> Result<Value, String> {
    let obj = plugin.as_object().ok_or("not a JSON object")?;
    if obj.contains_key("plugins") {
        return Err("a conflist, not a single-plugin config".into());
    }
    if obj
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("no \"type\": neither a plugin config nor a conflist".into());
    }
    let name = match obj.get("name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n,
        // libcni refuses a list without a name, and so a runtime this .conf already.
        _ => return Err("no \"name\"".into()),
    };
    let mut inner = obj.clone();
    inner.remove("cniVersion");
    inner.remove("name");
    let mut list = serde_json::Map::new();
    if let Some(version) = obj.get("cniVersion") {
        list.insert("cniVersion".into(), version.clone());
    }
    list.insert("name".into(), Value::String(name.to_owned()));
    list.insert("plugins".into(), Value::Array(vec![Value::Object(inner)]));
    Ok(Value::Object(list))
}

/// The plugin answers a `cniVersion` outside [`SUPPORTED_VERSIONS`] with "incompatible
/// version", which fails the pod's ADD: only chain where it speaks the version (0.3.0 on, the
/// first with `prevResult` for chained plugins; kindnet, flannel and many Calico installs
/// write 0.3.1).
pub(super) fn check_version(path: &Path, conf: &Value) -> Result<(), InstallError> {
    let version = conf.get("cniVersion").and_then(Value::as_str).unwrap_or("");
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(InstallError::UnsupportedVersion {
            path: path.to_owned(),
            version: version.to_owned(),
        })
    }
}

/// Where the conversion of the single-plugin config `original` goes: `NN-name.conflist`.
pub fn generated_path(original: &Path) -> PathBuf {
    original.with_extension("conflist")
}

/// Where a converted single-plugin config is kept: `NN-name.conf.bridgenet-orig`.
pub fn kept_path(original: &Path) -> PathBuf {
    let mut name = original.file_name().unwrap_or_default().to_owned();
    name.push(ORIGINAL_SUFFIX);
    original.with_file_name(name)
}

/// Whether `generated`, apart from our entry, is the conversion of `original`.
pub(super) fn converted_from(generated: &Value, original: &Value) -> bool {
    let base = unchain(generated).unwrap_or_else(|| generated.clone());
    convert_single(original).is_ok_and(|c| c == base)
}

pub(super) fn chained_conversion(list: &Value, socket: &Path) -> Value {
    // A fresh conversion has no entry of ours, so chain_into always has something to add.
    match chain_into(list, socket) {
        Ok(Some(chained)) => chained,
        _ => list.clone(),
    }
}
