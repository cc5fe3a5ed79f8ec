//! `bridgenet.io/v1alpha1`: the user's `BridgeNetwork` and the operator's per-node `NodeBridge`.
//!
//! Validation that a single object can check lives here, in the schema, so that `kubectl apply`
//! rejects bad input before anything else sees it: OpenAPI bounds for sizes and lengths, CEL
//! (`x-kubernetes-validations`) for everything about addresses, using the Kubernetes IP/CIDR CEL
//! library (`isCIDR`, `cidr`, `ip`, available in CRD rules since Kubernetes 1.31). Validation that
//! needs other objects (overlapping subnets, duplicate bridge names) is the operator's.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of every bridgenet resource.
pub const GROUP: &str = "bridgenet.io";
/// API version of this module's types.
pub const VERSION: &str = "v1alpha1";

/// Powers of two from 2^0 to 2^32, indexed by host-bit count. CEL has no exponent operator, and the
/// IP library has no "last address of a CIDR", so the broadcast check computes the gateway's host
/// part as an integer and compares it with `2^(32-prefix) - 1`.
macro_rules! pow2_list {
    () => {
        "[1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192,16384,32768,65536,131072,262144,524288,\
         1048576,2097152,4194304,8388608,16777216,33554432,67108864,134217728,268435456,536870912,\
         1073741824,2147483648,4294967296]"
    };
}

/// `int` value of the dotted IPv4 address in the CEL expression `$e` (a string).
macro_rules! ipv4_int {
    ($e:literal) => {
        concat!(
            "(int(",
            $e,
            ".split('.')[0]) * 16777216 + int(",
            $e,
            ".split('.')[1]) * 65536 + int(",
            $e,
            ".split('.')[2]) * 256 + int(",
            $e,
            ".split('.')[3]))"
        )
    };
}

/// CEL: the string `$e` is a valid CIDR of IP family `$f`. Rules that relate two fields start with
/// this guard so that a malformed field yields its own field-level message rather than an
/// evaluation error of the cross-field rule (`cidr()` of a bad string errors, it does not return
/// false).
macro_rules! cidr_ok {
    ($e:literal, $f:literal) => {
        concat!(
            "(isCIDR(",
            $e,
            ") && cidr(",
            $e,
            ").ip().family() == ",
            $f,
            ")"
        )
    };
}

/// CEL: the string `$e` is a valid IP address of family `$f` (see [`cidr_ok`]).
macro_rules! ip_ok {
    ($e:literal, $f:literal) => {
        concat!("(isIP(", $e, ") && ip(", $e, ").family() == ", $f, ")")
    };
}

/// A Docker-style bridge network: one subnet and gateway, attached pods on every selected node,
/// isolated from every other BridgeNetwork.
///
/// Docker equivalent: `docker network create --driver=bridge --subnet=... --gateway=... NAME`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bridgenet.io",
    version = "v1alpha1",
    kind = "BridgeNetwork",
    plural = "bridgenetworks",
    singular = "bridgenetwork",
    shortname = "bn",
    category = "bridgenet",
    status = "BridgeNetworkStatus",
    cel,
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.subnet"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","jsonPath":".status.gateway"}"#,
    printcolumn = r#"{"name":"Bridge","type":"string","jsonPath":".status.bridge"}"#,
    printcolumn = r#"{"name":"Ready Nodes","type":"string","jsonPath":".status.readySummary"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","jsonPath":".status.endpoints"}"#,
    printcolumn = r#"{"name":"Internal","type":"boolean","priority":1,"jsonPath":".spec.internal"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(concat!("!has(self.gateway) || !", cidr_ok!("self.subnet", 4), " || !", ip_ok!("self.gateway", 4),
        " || cidr(self.subnet).containsIP(self.gateway)"))
        .message("gateway must be an address inside subnet: pick one from the subnet (Docker's convention is the first host, e.g. 172.20.0.1 for 172.20.0.0/16), or omit gateway to get that default"),
    // `!(a == b)`, never `a != b`, on IP/CIDR values: the API server's cost estimator prices
    // `==` of the IP library's types as a constant but `!=` as unbounded, and refuses the CRD
    // (kube-cel's estimator does not; `crd::schema` guards the pattern).
    validation = Rule::new(concat!("!has(self.gateway) || !", cidr_ok!("self.subnet", 4), " || !", ip_ok!("self.gateway", 4),
        " || !(ip(self.gateway) == cidr(self.subnet).masked().ip())"))
        .message("gateway must not be the subnet's network address: use a host address such as the first one (x.x.x.1), or omit gateway"),
    validation = Rule::new(concat!(
        "!has(self.gateway) || !", cidr_ok!("self.subnet", 4), " || !", ip_ok!("self.gateway", 4),
        " || !cidr(self.subnet).containsIP(self.gateway) || cidr(self.subnet).prefixLength() >= 31 || ",
        ipv4_int!("self.gateway"), " % ", pow2_list!(), "[32 - cidr(self.subnet).prefixLength()] != ",
        pow2_list!(), "[32 - cidr(self.subnet).prefixLength()] - 1"))
        .message("gateway must not be the subnet's broadcast address: use a host address such as the first one (x.x.x.1), or omit gateway"),
    validation = Rule::new(concat!("!has(self.ipRange) || !", cidr_ok!("self.subnet", 4), " || !", cidr_ok!("self.ipRange", 4),
        " || cidr(self.subnet).containsCIDR(self.ipRange)"))
        .message("ipRange must lie inside subnet: use a CIDR within the subnet (like docker --ip-range), or omit it to use the whole subnet"),
    validation = Rule::new(concat!("!has(self.blockSize) || (has(self.ipRange)",
        " ? !", cidr_ok!("self.ipRange", 4), " || self.blockSize >= cidr(self.ipRange).prefixLength()",
        " : !", cidr_ok!("self.subnet", 4), " || self.blockSize >= cidr(self.subnet).prefixLength())"))
        .message("blockSize must be a prefix length at least as long as the subnet's (or ipRange's): per-node blocks are carved out of it"),
    validation = Rule::new(concat!("!has(self.excludeAddresses) || !", cidr_ok!("self.subnet", 4),
        " || self.excludeAddresses.all(a, !isIP(a) || cidr(self.subnet).containsIP(a)",
        " || (has(self.ipv6) && (!", cidr_ok!("self.ipv6.subnet", 6), " || cidr(self.ipv6.subnet).containsIP(a))))"))
        .message("every excludeAddresses entry must be an address inside subnet (or ipv6.subnet): remove the ones outside it"),
    validation = Rule::new("!has(self.ipv6) || !has(self.mtu) || self.mtu >= 1280")
        .message("mtu must be at least 1280 when ipv6 is enabled (IPv6's minimum link MTU): raise mtu or remove ipv6"),
    validation = Rule::new("has(self.gateway) == has(oldSelf.gateway) && (!has(self.gateway) || self.gateway == oldSelf.gateway)")
        .message("gateway is immutable, like a Docker network's: create a new BridgeNetwork to use another gateway"),
    validation = Rule::new("has(self.ipRange) == has(oldSelf.ipRange) && (!has(self.ipRange) || self.ipRange == oldSelf.ipRange)")
        .message("ipRange is immutable, since addresses are already handed out from it: create a new BridgeNetwork to change it"),
    validation = Rule::new("has(self.ipv6) == has(oldSelf.ipv6)")
        .message("ipv6 cannot be added to or removed from an existing network: create a new BridgeNetwork for dual stack"),
    validation = Rule::new("has(self.bridge) == has(oldSelf.bridge) && (!has(self.bridge) || self.bridge == oldSelf.bridge)")
        .message("bridge is immutable: pods are attached to the existing bridge; create a new BridgeNetwork to use another name"),
    validation = Rule::new("has(self.blockSize) == has(oldSelf.blockSize) && (!has(self.blockSize) || self.blockSize == oldSelf.blockSize)")
        .message("blockSize is immutable, since nodes already hold blocks of the old size: create a new BridgeNetwork to change it"),
)]
pub struct BridgeNetworkSpec {
    /// IPv4 subnet of the network in CIDR notation, e.g. `172.20.0.0/16` (docker `--subnet`).
    /// Immutable.
    #[schemars(length(max = 18))]
    #[x_kube(
        validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 4")
            .message("subnet must be an IPv4 CIDR such as 172.20.0.0/16 (IPv6 goes in ipv6.subnet)"),
        validation = Rule::new("!isCIDR(self) || cidr(self).masked() == cidr(self)")
            .message("subnet must be written with its network address, e.g. 172.20.0.0/16 rather than 172.20.3.4/16"),
        validation = Rule::new("!isCIDR(self) || cidr(self).ip().family() != 4 || cidr(self).prefixLength() <= 30")
            .message("subnet must hold at least two host addresses: use a prefix length of /30 or shorter"),
        validation = Rule::new("self == oldSelf")
            .message("subnet is immutable, like a Docker network's: create a new BridgeNetwork for another subnet"),
    )]
    pub subnet: String,

    /// Gateway address inside `subnet` (docker `--gateway`). Default: the subnet's first host
    /// address. Every node's bridge answers on it. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15), transform = not_nullable)]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4")
        .message("gateway must be an IPv4 address such as 172.20.0.1"))]
    pub gateway: Option<String>,

    /// Pods get addresses only from this CIDR inside `subnet` (docker `--ip-range`).
    /// Default: the whole subnet. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 18), transform = not_nullable)]
    #[x_kube(
        validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 4")
            .message("ipRange must be an IPv4 CIDR such as 172.20.10.0/24"),
        validation = Rule::new("!isCIDR(self) || cidr(self).masked() == cidr(self)")
            .message("ipRange must be written with its network address, e.g. 172.20.10.0/24 rather than 172.20.10.7/24"),
    )]
    pub ip_range: Option<String>,

    /// Addresses never handed to a pod (docker `--aux-address`), IPv4 or IPv6.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 39)))]
    #[x_kube(validation = Rule::new("self.all(a, isIP(a))")
        .message("every excludeAddresses entry must be a single IP address such as 172.20.0.10"))]
    pub exclude_addresses: Vec<String>,

    /// Optional IPv6 subnet for a dual-stack network (docker `--ipv6 --subnet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    pub ipv6: Option<Ipv6Config>,

    /// Name of the Linux bridge on every node (at most 15 bytes). Default: derived from the
    /// network name (`bn-` and a hash), never colliding for different names. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15), transform = not_nullable)]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*$')")
        .message("bridge must be a Linux interface name: 1-15 characters of letters, digits, '_', '.', '-', starting with a letter or digit"))]
    pub bridge: Option<String>,

    /// MTU of the bridge and of every pod interface on it (docker
    /// `com.docker.network.driver.mtu`). Default: the operator's `--default-mtu` (1450, room for
    /// the VXLAN overlay on a 1500-byte underlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 65535), transform = not_nullable, transform = kube_int_format)]
    pub mtu: Option<u32>,

    /// No traffic leaves the network, not even through the gateway (docker `--internal`).
    #[serde(default)]
    pub internal: bool,

    /// Masquerade traffic that leaves the network through the node
    /// (docker `com.docker.network.bridge.enable_ip_masquerade`).
    #[serde(default = "default_true")]
    pub masquerade: bool,

    /// Pods of this network may talk to each other
    /// (docker `com.docker.network.bridge.enable_icc`).
    #[serde(default = "default_true")]
    pub inter_pod_traffic: bool,

    /// Name resolution on the network, like Docker's embedded DNS: every node answers at the
    /// gateway address (port 53) with the addresses of the network's pods by name,
    /// `name.namespace` and alias, and forwards other names upstream. Default: on.
    #[serde(default = "default_true")]
    pub dns: bool,

    /// Pods keep their addresses across deletion and re-creation, like a Docker container keeps
    /// its `--ip` across restarts: a pod created again with the same namespace and name gets the
    /// address its predecessor had, on whatever node it lands, if it comes back within
    /// `stickyHoldSeconds`. Each such address is an `AddressClaim`. Pods may also ask for it one
    /// network at a time (`"sticky": true` in their annotation). Default: off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sticky_addresses: bool,

    /// How long a sticky address stays reserved for its pod after the pod is gone. Default:
    /// 600 (10 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2592000), transform = not_nullable, transform = kube_int_format)]
    pub sticky_hold_seconds: Option<u32>,

    /// Prefix length of the per-node address blocks carved from `ipRange` (or `subnet`).
    /// Default: /26 (64 addresses), or the whole range when it is smaller. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 32), transform = not_nullable, transform = kube_int_format)]
    pub block_size: Option<u8>,

    /// Nodes on which the network exists. Default: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    pub node_selector: Option<LabelSelector>,

    /// Namespaces whose pods may attach. Default: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = not_nullable)]
    pub namespace_selector: Option<LabelSelector>,
}

/// The IPv6 half of a dual-stack network.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(concat!("!has(self.gateway) || !", cidr_ok!("self.subnet", 6), " || !", ip_ok!("self.gateway", 6),
        " || cidr(self.subnet).containsIP(self.gateway)"))
        .message("ipv6.gateway must be an address inside ipv6.subnet, or omitted to get the subnet's first host address"),
    validation = Rule::new(concat!("!has(self.gateway) || !", cidr_ok!("self.subnet", 6), " || !", ip_ok!("self.gateway", 6),
        " || !(ip(self.gateway) == cidr(self.subnet).masked().ip())"))
        .message("ipv6.gateway must not be the subnet-router anycast (network) address: use a host address such as ::1 of the subnet"),
    validation = Rule::new(concat!("!has(self.ipRange) || !", cidr_ok!("self.subnet", 6), " || !", cidr_ok!("self.ipRange", 6),
        " || cidr(self.subnet).containsCIDR(self.ipRange)"))
        .message("ipv6.ipRange must lie inside ipv6.subnet, or be omitted"),
    validation = Rule::new(concat!("!has(self.blockSize) || (has(self.ipRange)",
        " ? !", cidr_ok!("self.ipRange", 6), " || self.blockSize >= cidr(self.ipRange).prefixLength()",
        " : !", cidr_ok!("self.subnet", 6), " || self.blockSize >= cidr(self.subnet).prefixLength())"))
        .message("ipv6.blockSize must be at least the prefix length of ipv6.subnet (or ipv6.ipRange)"),
    validation = Rule::new("has(self.gateway) == has(oldSelf.gateway) && (!has(self.gateway) || self.gateway == oldSelf.gateway)")
        .message("ipv6.gateway is immutable: create a new BridgeNetwork to change it"),
    validation = Rule::new("has(self.ipRange) == has(oldSelf.ipRange) && (!has(self.ipRange) || self.ipRange == oldSelf.ipRange)")
        .message("ipv6.ipRange is immutable, since addresses are already handed out from it: create a new BridgeNetwork to change it"),
    validation = Rule::new("has(self.blockSize) == has(oldSelf.blockSize) && (!has(self.blockSize) || self.blockSize == oldSelf.blockSize)")
        .message("ipv6.blockSize is immutable, since nodes already hold blocks of the old size: create a new BridgeNetwork to change it"),
)]
pub struct Ipv6Config {
    /// IPv6 subnet in CIDR notation, e.g. `fd00:20::/64`. Immutable.
    #[schemars(length(max = 43))]
    #[x_kube(
        validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 6")
            .message("ipv6.subnet must be an IPv6 CIDR such as fd00:20::/64"),
        validation = Rule::new("!isCIDR(self) || cidr(self).masked() == cidr(self)")
            .message("ipv6.subnet must be written with its network address, e.g. fd00:20::/64"),
        validation = Rule::new("!isCIDR(self) || cidr(self).ip().family() != 6 || cidr(self).prefixLength() <= 126")
            .message("ipv6.subnet must hold host addresses: use a prefix length of /126 or shorter"),
        validation = Rule::new("self == oldSelf")
            .message("ipv6.subnet is immutable: create a new BridgeNetwork to change it"),
    )]
    pub subnet: String,

    /// IPv6 gateway inside `subnet`. Default: the subnet's first host address. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 39), transform = not_nullable)]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 6")
        .message("ipv6.gateway must be an IPv6 address such as fd00:20::1"))]
    pub gateway: Option<String>,

    /// Pods get IPv6 addresses only from this CIDR inside `subnet`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 43), transform = not_nullable)]
    #[x_kube(validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 6 && cidr(self).masked() == cidr(self)")
        .message("ipv6.ipRange must be an IPv6 CIDR written with its network address, e.g. fd00:20:0:0:1::/80"))]
    pub ip_range: Option<String>,

    /// Prefix length of the per-node IPv6 blocks. Default: /122 (64 addresses) or the whole range.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 128), transform = not_nullable, transform = kube_int_format)]
    pub block_size: Option<u8>,
}

/// Schema transform for optional spec fields: drop the `nullable: true` kube adds to every
/// `Option`, so that the API server prunes an explicit `null` (what a Helm template writes for an
/// empty value) before defaulting and validation. Absent and `null` then mean the same thing
/// everywhere — in the stored object, to OpenAPI, to CEL and to every client — instead of a
/// stored `null` that each reader has to treat as absent on its own.
fn not_nullable(schema: &mut schemars::Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    obj.remove("nullable");
    if let Some(serde_json::Value::Array(types)) = obj.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            obj.insert("type".into(), only);
        }
    }
    let null_branch = |v: &serde_json::Value| v.get("type").is_some_and(|t| t == "null");
    if let Some(serde_json::Value::Array(branches)) = obj.get("anyOf")
        && branches.len() == 2
        && let Some(other) = branches.iter().find(|b| !null_branch(b)).cloned()
        && branches.iter().any(null_branch)
    {
        obj.remove("anyOf");
        if let serde_json::Value::Object(inner) = other {
            for (k, v) in inner {
                obj.entry(k).or_insert(v);
            }
        }
    }
}

/// Schema transform for unsigned integer fields: schemars writes `format: uint8` / `uint32`,
/// formats the API server does not know, so every `kubectl apply` of the CRD printed `Warning:
/// unrecognized format`. The range stays in `minimum`/`maximum` (and in the Rust type); the format
/// becomes the Kubernetes integer format wide enough for the type.
fn kube_int_format(schema: &mut schemars::Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let known = match obj.get("format").and_then(serde_json::Value::as_str) {
        Some("uint8" | "uint16") => "int32",
        Some("uint32") => "int64",
        _ => return,
    };
    obj.insert("format".into(), known.into());
}

fn default_true() -> bool {
    true
}

/// What the operator reports about a network: `kubectl get bridgenetworks` columns and
/// `kubectl describe` conditions.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BridgeNetworkStatus {
    /// `Accepted` (valid and not overlapping another network) and `Ready` (every selected node
    /// programmed). A list map keyed on `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The gateway in effect (the spec's, or the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,

    /// The IPv6 gateway in effect, for dual-stack networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6: Option<String>,

    /// The bridge name in effect (the spec's, or the derived default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,

    /// VXLAN network identifier of the overlay, chosen once by the operator and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kube_int_format)]
    pub vni: Option<u32>,

    /// Selected nodes whose NodeBridge is Ready.
    #[serde(default)]
    pub ready_nodes: i32,

    /// Nodes the network is selected onto.
    #[serde(default)]
    pub total_nodes: i32,

    /// `ready/total`, for the READY NODES column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_summary: Option<String>,

    /// Pod interfaces attached across all nodes.
    #[serde(default)]
    pub endpoints: i32,

    /// IPv4 addresses still free for pods across the whole range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_addresses: Option<i64>,

    /// Address blocks and the node each is assigned to. The source of truth for block
    /// assignment, so that it survives operator restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cidr"]))]
    pub blocks: Vec<BlockAssignment>,
}

/// The overlay of one BridgeNetwork: the nodes where it has pods, with their underlay
/// addresses. Every agent of the network floods its broadcasts (ARP, neighbour discovery,
/// unicast not yet learned) over VXLAN to these nodes and to no other, so flooding grows with
/// the nodes that have pods of the network, not with the nodes it is selected onto.
///
/// Written by the operator (named like the network, owned by it), read by every agent. Apart
/// from the network's status, which changes with every endpoint count, so that the agents'
/// watch carries a change only when a node gains its first pod of the network or loses its
/// last one, or such a node's address changes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bridgenet.io",
    version = "v1alpha1",
    kind = "NetworkOverlay",
    plural = "networkoverlays",
    singular = "networkoverlay",
    shortname = "bno",
    category = "bridgenet",
    printcolumn = r#"{"name":"Network","type":"string","jsonPath":".spec.network"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".spec.nodeCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkOverlaySpec {
    /// The BridgeNetwork.
    pub network: String,
    /// Number of `endpoints`, for the NODES column.
    #[serde(default)]
    pub node_count: i32,
    /// The nodes with pods of the network, sorted by name. Atomic: one writer (the operator)
    /// replaces it whole, and a list map would cost a managedFields entry per node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub endpoints: Vec<TunnelEndpoint>,
}

/// A node where a network has pods, as the overlay reaches it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct TunnelEndpoint {
    /// Node name.
    pub node: String,
    /// The node's underlay address (its `InternalIP`), the VXLAN tunnel endpoint.
    pub address: String,
}

/// One per-node address block.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct BlockAssignment {
    /// The block, e.g. `172.20.0.0/26`.
    pub cidr: String,
    /// The node that owns it.
    pub node: String,
}

/// The part of one BridgeNetwork that one node realizes. Written by the operator (one per
/// network and node, owned by the BridgeNetwork); its status is written by that node's agent.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bridgenet.io",
    version = "v1alpha1",
    kind = "NodeBridge",
    plural = "nodebridges",
    singular = "nodebridge",
    shortname = "nbr",
    category = "bridgenet",
    status = "NodeBridgeStatus",
    printcolumn = r#"{"name":"Network","type":"string","jsonPath":".spec.network"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Blocks","type":"string","jsonPath":".spec.blocks"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","jsonPath":".status.endpointCount"}"#,
    printcolumn = r#"{"name":"Bridge","type":"string","priority":1,"jsonPath":".spec.bridge"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeBridgeSpec {
    /// The BridgeNetwork this realizes.
    pub network: String,
    /// The node that realizes it.
    pub node: String,
    /// Linux bridge name on the node.
    pub bridge: String,
    /// IPv4 subnet of the network.
    pub subnet: String,
    /// IPv4 gateway: the address of the bridge on every node (an anycast gateway).
    pub gateway: String,
    /// MAC of the bridge, the same on every node so that the gateway's ARP entry in a pod stays
    /// valid wherever it is (locally administered, derived from the network name).
    pub gateway_mac: String,
    /// IPv6 subnet and gateway for dual-stack networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<NodeBridgeIpv6>,
    /// Address blocks (IPv4 and IPv6 CIDRs) this node hands out pod addresses from.
    #[serde(default)]
    pub blocks: Vec<String>,
    /// Addresses inside the blocks that are never handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_addresses: Vec<String>,
    /// MTU of the bridge and pod interfaces.
    #[schemars(transform = kube_int_format)]
    pub mtu: u32,
    /// VXLAN network identifier of the network's overlay.
    #[schemars(transform = kube_int_format)]
    pub vni: u32,
    /// No traffic leaves the network.
    #[serde(default)]
    pub internal: bool,
    /// Masquerade egress through the node.
    #[serde(default = "default_true")]
    pub masquerade: bool,
    /// Pods of the network may talk to each other.
    #[serde(default = "default_true")]
    pub inter_pod_traffic: bool,
    /// The node answers DNS on the gateway address (copied from the network).
    #[serde(default = "default_true")]
    pub dns: bool,
    /// Pods keep their addresses across re-creation (copied from the network).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sticky_addresses: bool,
    /// Namespaces whose pods may attach (copied from the network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Deprecated: the other nodes of the network, for agents older than the network's
    /// `NetworkOverlay`. The operator writes it only on a NodeBridge that already has it
    /// and whose agent does not report `status.networkPeers`, and drops it once the agent does,
    /// so that an upgrade keeps the old agents' overlay until they are replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub peers: Vec<Peer>,
}

/// The IPv6 half of a NodeBridge.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeBridgeIpv6 {
    /// IPv6 subnet of the network.
    pub subnet: String,
    /// IPv6 gateway on the bridge.
    pub gateway: String,
}

/// Another node of the same network.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Node name.
    pub node: String,
    /// The node's underlay address (its `InternalIP`), the VXLAN tunnel endpoint.
    pub address: String,
    /// The node's address blocks.
    #[serde(default)]
    pub blocks: Vec<String>,
}

/// What the agent on the node reports: whether the node is programmed, and the endpoints
/// attached there (the `docker network inspect` view).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeBridgeStatus {
    /// `Ready`: bridge, gateway, overlay and firewall are in place. A list map keyed on `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pod interfaces attached on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Number of endpoints, for the ENDPOINTS column and aggregation.
    #[serde(default)]
    pub endpoint_count: i32,
    /// IPv4 addresses allocated from this node's blocks.
    #[serde(default)]
    pub allocated_addresses: i64,
    /// IPv4 addresses still free in this node's blocks.
    #[serde(default)]
    pub free_addresses: i64,
    /// The agent learns the network's overlay peers from its `NetworkOverlay`, so `spec.peers`
    /// is not needed here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network_peers: bool,
}

/// One pod interface on the network.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Interface name inside the pod, e.g. `net1`.
    pub interface: String,
    /// IPv4 address with prefix, e.g. `172.20.0.5/16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// IPv6 address with prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// MAC address of the pod interface.
    pub mac: String,
    /// DNS aliases of the pod on this network (docker `--network-alias`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Sandbox (pod infra container) ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// When it was attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// Default of `BridgeNetwork.spec.stickyHoldSeconds`.
pub const DEFAULT_STICKY_HOLD_SECONDS: u32 = 600;

/// One address of a network held for one pod, cluster-wide: a static address (docker `--ip`),
/// or a sticky one. The object's name is derived from the network and the address
/// ([`crate::claims::claim_name`]), so the API server's name uniqueness makes a claim atomic:
/// of two pods asking for the same address anywhere, one creates it and the other is told who
/// holds it.
///
/// The agent of the pod's node creates it; the owner of the address's block grants it (the agent
/// of the node whose block holds it, or the operator while no node owns the block), because only
/// the owner knows whether it already gave the address to a pod of its own.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bridgenet.io",
    version = "v1alpha1",
    kind = "AddressClaim",
    plural = "addressclaims",
    singular = "addressclaim",
    shortname = "bnac",
    category = "bridgenet",
    status = "AddressClaimStatus",
    printcolumn = r#"{"name":"Network","type":"string","jsonPath":".spec.network"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.pod.namespace"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.pod.name"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Sticky","type":"boolean","priority":1,"jsonPath":".spec.sticky"}"#,
    printcolumn = r#"{"name":"Granted By","type":"string","priority":1,"jsonPath":".status.grantedBy"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AddressClaimSpec {
    /// The BridgeNetwork. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("network is immutable"))]
    pub network: String,
    /// The address, IPv4 or IPv6, without prefix. Immutable.
    #[x_kube(validation = Rule::new("isIP(self)").message("address must be an IP address"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("address is immutable"))]
    pub address: String,
    /// The pod that holds it.
    pub pod: ClaimHolder,
    /// The node where the pod's interface is.
    pub node: String,
    /// The pod's sandbox (CNI container ID) holding the interface.
    #[serde(default)]
    pub container_id: String,
    /// The interface in the pod.
    #[serde(default)]
    pub interface: String,
    /// Kept for the pod's namespace and name after the pod is gone (for the network's
    /// `stickyHoldSeconds`), so that a pod created again with the same name gets it back.
    #[serde(default)]
    pub sticky: bool,
}

/// The pod holding an address.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimHolder {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID: a pod created again under the same name is another holder.
    #[serde(default)]
    pub uid: String,
}

impl std::fmt::Display for ClaimHolder {
    /// `namespace/name`, as allocations and messages name pods.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a claim stands.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AddressClaimStatus {
    /// `Bound` (granted by the block's owner), `Refused` (the owner had given the address
    /// out), or `Released` (a sticky claim whose pod is gone, held for its successor). Absent
    /// while the claim waits for its grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClaimPhase>,
    /// Who granted or refused it: a node name, or `operator` for a block no node owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_by: Option<String>,
    /// Why it was refused, or what holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When a sticky claim's pod went away; it is deleted `stickyHoldSeconds` later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Time>,
}

/// Phase of an [`AddressClaim`].
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimPhase {
    /// The address is the pod's.
    Bound,
    /// The address was already in use; the claim is deleted by its creator.
    Refused,
    /// The pod is gone; the address waits for a pod of the same name.
    Released,
}

/// Labels every AddressClaim carries (the network, and the pod's node).
pub fn address_claim_labels(network: &str, node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (crate::LABEL_NETWORK.to_owned(), network.to_owned()),
        (crate::LABEL_NODE.to_owned(), node.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "bridgenet-agent".to_owned(),
        ),
    ])
}

/// Labels every NodeBridge carries, so that children are found (and stale ones removed) by
/// label rather than by name.
pub fn node_bridge_labels(network: &str, node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (crate::LABEL_NETWORK.to_owned(), network.to_owned()),
        (crate::LABEL_NODE.to_owned(), node.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "bridgenet-operator".to_owned(),
        ),
    ])
}
