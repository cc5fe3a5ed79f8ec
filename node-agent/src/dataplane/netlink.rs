//! The small netlink surface the data plane needs, as a trait: the real implementation is
//! [`super::rtnl::Rtnl`], the recording fake is `super::fake::FakeNetlink` (test builds and
//! the `testing` feature only).
//!
//! Sysctls are part of it too: they are kernel state the plan reads and writes like links,
//! and the fake must see them to prove a no-change apply writes nothing.

use std::future::Future;
use std::net::IpAddr;

use ipnet::IpNet;

/// Kind of a link, as far as the data plane cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A Linux bridge.
    Bridge,
    /// A VXLAN device with its configuration.
    Vxlan(VxlanConfig),
    /// Anything else (`veth`, `dummy`, a physical NIC...), by kind name.
    Other(String),
}

/// The VXLAN settings the data plane sets and checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    /// VXLAN network identifier (24 bits), immutable once the device exists.
    pub vni: u32,
    /// Source address of the encapsulated packets (this node's underlay address); `None`
    /// when the kernel reports none.
    pub local: Option<IpAddr>,
    /// UDP destination port of the encapsulated packets, the same on every node.
    pub port: u16,
    /// Whether the device learns which node each remote MAC lives on. The data plane keeps it
    /// on: known unicast goes to one node, only broadcast and unknown destinations use the
    /// flood entries (see [`super::plan::wanted_vxlan`]).
    pub learning: bool,
}

/// A link as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index: what every change and deletion addresses.
    pub index: u32,
    /// Interface name (`IFLA_IFNAME`).
    pub name: String,
    /// From `IFLA_INFO_KIND`, with the VXLAN settings when it is one.
    pub kind: LinkKind,
    /// `IFLA_IFALIAS`, our ownership marker (see [`super::marker`]); `None` when empty.
    pub alias: Option<String>,
    /// MTU in bytes.
    pub mtu: u32,
    /// Hardware address; `None` for links without an Ethernet one.
    pub mac: Option<[u8; 6]>,
    /// Administratively up (`IFF_UP`), whatever the carrier.
    pub up: bool,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
}

/// A link to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLink {
    /// Interface name, at most 15 bytes.
    pub name: String,
    /// Bridge or VXLAN (with config); the data plane creates no other kind.
    pub kind: LinkKind,
    /// MTU in bytes.
    pub mtu: u32,
    /// MAC to pin: the bridge's anycast gateway MAC; `None` lets the kernel choose.
    pub mac: Option<[u8; 6]>,
}

/// Changes to an existing link; `None` leaves an attribute alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkChange {
    /// New alias (the kernel ignores `IFLA_IFALIAS` on creation, so the marker is set by a
    /// change right after it).
    pub alias: Option<String>,
    /// MTU to set.
    pub mtu: Option<u32>,
    /// MAC to set.
    pub mac: Option<[u8; 6]>,
    /// Enslave to the bridge with this index.
    pub master: Option<u32>,
    /// Set administratively up; `false` leaves the state alone (nothing is ever set down).
    pub up: bool,
}

impl LinkChange {
    /// Whether no field is set: applying it would write nothing.
    pub fn is_empty(&self) -> bool {
        *self == LinkChange::default()
    }
}

/// A failed netlink (or sysctl) call, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct NetlinkError {
    /// The operation and its object, e.g. `create bridge br-x`.
    pub op: String,
    /// The kernel's (or I/O) error text.
    pub message: String,
    /// errno when the kernel gave one (positive), so that callers can tell ENOENT apart.
    pub errno: Option<i32>,
}

impl NetlinkError {
    /// Builds an error for `op`.
    pub fn new(op: impl Into<String>, message: impl std::fmt::Display, errno: Option<i32>) -> Self {
        NetlinkError {
            op: op.into(),
            message: message.to_string(),
            errno,
        }
    }

    /// Whether the object was already gone (ENOENT, ENODEV, ESRCH, EADDRNOTAVAIL).
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno, Some(2 | 3 | 19 | 99))
    }
}

/// Kernel operations of the data plane. Every method is one netlink request (or one sysctl file
/// read/write), so a recording implementation counts exactly what a real one would send.
pub trait Netlink {
    /// Every link of the namespace.
    fn links(&mut self) -> impl Future<Output = Result<Vec<Link>, NetlinkError>>;
    /// One link by name, `None` when absent.
    fn link(&mut self, name: &str) -> impl Future<Output = Result<Option<Link>, NetlinkError>>;
    /// Addresses on link `index` (global scope and link-local).
    fn addresses(&mut self, index: u32) -> impl Future<Output = Result<Vec<IpNet>, NetlinkError>>;
    /// Destinations of the all-zeros-MAC (flood) FDB entries on VXLAN link `index`.
    fn flood_entries(
        &mut self,
        index: u32,
    ) -> impl Future<Output = Result<Vec<IpAddr>, NetlinkError>>;
    /// Creates a bridge or VXLAN link. It comes without its marker (the kernel ignores an
    /// alias on creation): the plan marks it with a change right after.
    fn create_link(&mut self, link: &NewLink) -> impl Future<Output = Result<(), NetlinkError>>;
    /// Applies every set field of `change` to link `index` in one request.
    fn change_link(
        &mut self,
        index: u32,
        change: &LinkChange,
    ) -> impl Future<Output = Result<(), NetlinkError>>;
    /// Deletes link `index` (a VXLAN port goes with its FDB entries).
    fn delete_link(&mut self, index: u32) -> impl Future<Output = Result<(), NetlinkError>>;
    /// Adds an address (without DAD for IPv6: the anycast gateway exists on every node).
    fn add_address(
        &mut self,
        index: u32,
        addr: IpNet,
    ) -> impl Future<Output = Result<(), NetlinkError>>;
    /// Removes address `addr` (matched with its prefix length) from link `index`.
    fn delete_address(
        &mut self,
        index: u32,
        addr: IpNet,
    ) -> impl Future<Output = Result<(), NetlinkError>>;
    /// Appends an all-zeros-MAC flood entry towards `dst` on VXLAN link `index`.
    fn append_flood(
        &mut self,
        index: u32,
        dst: IpAddr,
    ) -> impl Future<Output = Result<(), NetlinkError>>;
    /// Removes the flood entry towards `dst`.
    fn delete_flood(
        &mut self,
        index: u32,
        dst: IpAddr,
    ) -> impl Future<Output = Result<(), NetlinkError>>;
    /// Reads a sysctl, e.g. `net/ipv4/ip_forward`.
    fn read_sysctl(&mut self, key: &str) -> impl Future<Output = Result<String, NetlinkError>>;
    /// Writes a sysctl, e.g. `net/ipv4/ip_forward` = `1`.
    fn write_sysctl(
        &mut self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), NetlinkError>>;
}
