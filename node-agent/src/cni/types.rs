//! CNI protocol types (spec 1.1, also accepting 0.3.x, 0.4.0 and 1.0.0 configurations) and the wire
//! format between the thin `bridgenet` plugin and the agent.
//!
//! Pure data and parsing: no I/O, no async, so that the plugin binary links only serde.
//! Results are kept as JSON values where they pass through (a chained plugin must hand the
//! primary plugin's `prevResult` on untouched, including fields this code does not know).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The CNI version this plugin speaks natively.
pub const CNI_VERSION: &str = "1.1.0";
/// Versions accepted in network configurations (VERSION reports these).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Default path of the agent's socket, also the plugin's default.
pub const DEFAULT_SOCKET: &str = "/run/bridgenet/cni.sock";
/// Key of the GC parameter listing the attachments the runtime still knows.
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";

/// Well-known CNI error codes (spec section "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// First plugin-specific code: the pod's request cannot be satisfied (bad annotation,
    /// unknown network, namespace not admitted, address taken).
    pub const POD_REQUEST_REJECTED: u32 = 100;
    /// Plugin-specific: programming the kernel failed.
    pub const NETLINK_FAILURE: u32 = 101;
    /// Plugin-specific: the node's address journal could not be written.
    pub const IPAM_FAILURE: u32 = 102;
    /// Plugin-specific: CHECK found the attachment differs from what was set up.
    pub const CHECK_FAILED: u32 = 103;
}

/// A CNI operation (`CNI_COMMAND`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Attach.
    Add,
    /// Detach; must succeed for things already gone.
    Del,
    /// Verify an attachment.
    Check,
    /// Is the plugin ready to ADD.
    Status,
    /// Free everything not in `cni.dev/valid-attachments`.
    Gc,
    /// Report supported versions.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Gc => "GC",
            Self::Version => "VERSION",
        })
    }
}

/// A CNI error result: what the runtime logs and the kubelet shows in the pod's events.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    /// The version of the configuration (or ours).
    pub cni_version: String,
    /// Error code; see [`code`].
    pub code: u32,
    /// What went wrong, in one line.
    pub msg: String,
    /// What the operator should do about it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with a code, message and advice.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            cni_version: CNI_VERSION.to_owned(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The same error reported in the configuration's version.
    pub fn with_version(mut self, version: &str) -> Self {
        version.clone_into(&mut self.cni_version);
        self
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// The network configuration bridgenet reads from stdin. Unknown keys are kept in `extra`
/// (CNI passes `runtimeConfig`, `args` and others that only some plugins use).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Version of the configuration.
    pub cni_version: String,
    /// Name of the network (conflist name).
    #[serde(default)]
    pub name: String,
    /// Plugin type, `bridgenet`.
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Path of the agent's socket. Default [`DEFAULT_SOCKET`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Multus delegate mode: attach exactly this BridgeNetwork as `CNI_IFNAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The previous plugin's result in a chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    /// Everything else, passed on untouched.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl NetConf {
    /// Parses and checks the version. Errors are CNI errors ready to print.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("network configuration is not valid JSON: {e}"),
                "check the bridgenet entry in the CNI configuration (/etc/cni/net.d); \
                 the agent rewrites it on start",
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("unsupported cniVersion {:?}", conf.cni_version),
                format!(
                    "bridgenet supports cniVersion {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        Ok(conf)
    }

    /// The socket to reach the agent on.
    pub fn socket_path(&self) -> &str {
        self.socket.as_deref().unwrap_or(DEFAULT_SOCKET)
    }

    /// Container IDs the runtime still knows (GC's `cni.dev/valid-attachments`).
    pub fn valid_attachments(&self) -> Result<Vec<String>, CniError> {
        let Some(value) = self.extra.get(VALID_ATTACHMENTS) else {
            return Ok(Vec::new());
        };
        #[derive(Deserialize)]
        struct Attachment {
            #[serde(rename = "containerID")]
            container_id: String,
        }
        let list: Vec<Attachment> = serde_json::from_value(value.clone()).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("{VALID_ATTACHMENTS} is malformed: {e}"),
                "expected a list of {containerID, ifname}",
            )
        })?;
        Ok(list.into_iter().map(|a| a.container_id).collect())
    }
}

/// `CNI_ARGS` (`K=V;K=V`) as a map.
pub fn parse_cni_args(args: &str) -> BTreeMap<String, String> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// One CNI invocation as the plugin forwards it to the agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    #[serde(default)]
    pub container_id: String,
    /// `CNI_NETNS`: path of the pod's network namespace (empty on some DELs).
    #[serde(default)]
    pub netns: String,
    /// `CNI_IFNAME`.
    #[serde(default)]
    pub ifname: String,
    /// `CNI_ARGS`.
    #[serde(default)]
    pub args: String,
    /// The network configuration as read from stdin.
    pub config: Value,
}

/// The agent's answer: a result to print, or an error.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Response {
    /// Success; `Value::Null` means "print nothing" (DEL, STATUS, GC).
    Ok(Value),
    /// Failure to report.
    Error(CniError),
}

/// One interface in a result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (CNI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for interfaces inside the sandbox; absent for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One address in a result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// `4` or `6`, only in 0.x results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address with prefix length, e.g. `172.20.0.5/16`.
    pub address: String,
    /// Gateway of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route in a result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// Destination CIDR.
    pub dst: String,
    /// Next hop, when not on-link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// DNS settings in a result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Dns {
    /// Name servers, in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
}

/// A CNI result (1.x shape; 0.3.x and 0.4.0 add `version` to each IP).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// Version of the result.
    pub cni_version: String,
    /// Interfaces created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// DNS of the attachment; only a result that starts a chain carries it (a delegate's): in
    /// a chain the primary's `dns` describes the pod's resolv.conf and is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
}

impl CniResult {
    /// Appends `ours` to a chain's `prevResult` (or starts a new result), renumbering interface
    /// indexes, and keeps every field of `prev` the primary plugin set.
    pub fn append_to(self, prev: Option<&Value>, version: &str) -> Value {
        let mut out = match prev {
            Some(Value::Object(map)) => Value::Object(map.clone()),
            _ => serde_json::json!({}),
        };
        let legacy = version.starts_with("0.");
        if let Value::Object(map) = &mut out {
            map.insert("cniVersion".into(), Value::String(version.to_owned()));
            let base = map
                .get("interfaces")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let interfaces = map
                .entry("interfaces")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = interfaces {
                list.extend(
                    self.interfaces
                        .into_iter()
                        .filter_map(|i| serde_json::to_value(i).ok()),
                );
            }
            let ips = map.entry("ips").or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = ips {
                list.extend(self.ips.into_iter().filter_map(|mut ip| {
                    ip.interface = ip.interface.map(|i| i + base);
                    if legacy {
                        ip.version = Some(if ip.address.contains(':') { "6" } else { "4" }.into());
                    }
                    serde_json::to_value(ip).ok()
                }));
            }
            let routes = map
                .entry("routes")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = routes {
                list.extend(
                    self.routes
                        .into_iter()
                        .filter_map(|r| serde_json::to_value(r).ok()),
                );
            }
            if let Some(dns) = self.dns
                && !map.contains_key("dns")
                && let Ok(v) = serde_json::to_value(dns)
            {
                map.insert("dns".into(), v);
            }
            for key in ["interfaces", "ips", "routes"] {
                if map
                    .get(key)
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty)
                {
                    map.remove(key);
                }
            }
        }
        out
    }
}

/// The VERSION answer.
pub fn version_result(config_version: Option<&str>) -> Value {
    serde_json::json!({
        "cniVersion": config_version.unwrap_or(CNI_VERSION),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_cni_args_with_ignore_unknown() {
        let args = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc",
        );
        assert_eq!(args["K8S_POD_NAMESPACE"], "default");
        assert_eq!(args["K8S_POD_NAME"], "web");
        assert_eq!(args.len(), 4);
    }

    #[test]
    fn rejects_unknown_versions_and_bad_json() {
        let err = NetConf::parse(br#"{"cniVersion":"0.2.0","type":"bridgenet"}"#).unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        let err = NetConf::parse(b"{").unwrap_err();
        assert_eq!(err.code, code::DECODE_FAILURE);
        let conf = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"k8s","type":"bridgenet","network":"x","foo":1}"#,
        )
        .unwrap();
        assert_eq!(conf.network.as_deref(), Some("x"));
        assert_eq!(conf.extra["foo"], 1);
        assert_eq!(conf.socket_path(), DEFAULT_SOCKET);
    }

    #[test]
    fn appends_to_prev_result_renumbering_interfaces() {
        let prev = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.0.0.5/24", "interface": 1}],
            "dns": {"nameservers": ["10.96.0.10"]},
        });
        let ours = CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface {
                name: "net1".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: Some(1450),
                sandbox: "/x".into(),
            }],
            ips: vec![IpConfig {
                version: None,
                address: "172.20.0.5/16".into(),
                gateway: Some("172.20.0.1".into()),
                interface: Some(0),
            }],
            routes: vec![],
            dns: Some(Dns {
                nameservers: vec!["172.20.0.1".into()],
            }),
        };
        let out = ours.append_to(Some(&prev), "1.0.0");
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(out["ips"][1]["interface"], 2);
        // The primary's DNS is the pod's: never replaced by an attachment's.
        assert_eq!(
            out["dns"],
            serde_json::json!({"nameservers": ["10.96.0.10"]})
        );
        assert!(out.get("routes").is_none());
        let legacy = CniResult {
            ips: vec![IpConfig {
                version: None,
                address: "fd00::5/64".into(),
                gateway: None,
                interface: None,
            }],
            dns: Some(Dns {
                nameservers: vec!["fd00::1".into()],
            }),
            ..CniResult::default()
        }
        .append_to(None, "0.4.0");
        assert_eq!(legacy["ips"][0]["version"], "6");
        assert_eq!(legacy["dns"]["nameservers"], serde_json::json!(["fd00::1"]));
        assert_eq!(legacy["cniVersion"], "0.4.0");
    }

    #[test]
    fn reads_valid_attachments() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"bridgenet",
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(conf.valid_attachments().unwrap(), vec!["a".to_owned()]);
    }
}
