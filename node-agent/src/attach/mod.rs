//! Putting a pod on a bridge: a veth pair created with its peer directly in the pod's network
//! namespace, the pod end configured (MAC, MTU, addresses, optional default route) through a
//! netlink socket opened inside the pod's namespace, the host end then put on the network's
//! bridge, and a gratuitous ARP / unsolicited NA once its port forwards ([`announce`]).
//!
//! Every call runs on a fresh OS thread that `setns`es ([`crate::dataplane::netns`]): network
//! namespaces are per thread, and a thread that entered a pod's namespace must never run
//! anything else afterwards, so it ends with the call. Netlink sockets are opened after the `setns`, which binds them to that
//! namespace.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use bridgenet_crds::Mac;
use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, BridgePortState, In6AddrGenMode, InfoBridgePort, InfoData,
    InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use crate::dataplane::links;
pub use crate::dataplane::marker::{POD_ALIAS_PREFIX, pod_alias};
use crate::dataplane::netns::{self, Netns, NetnsError, in_netns, on_own_thread_then};
use crate::dataplane::rtnl::{connect_handle, errno, link_message};
use crate::metrics::{self, Write};

pub mod announce;

/// Errors of attaching and detaching.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The work could not run in the host's or the pod's network namespace (opening or
    /// entering it, its thread, its netlink socket).
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The network's bridge is not on this node (yet).
    #[error("bridge {0} does not exist on this node yet")]
    NoBridge(String),
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was being done (names the interface).
        op: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// The host or the pod is not as the request needs or expects: CHECK found a difference,
    /// the pod already has the interface name or a default route, a link vanished mid-way.
    /// The text says which; the runtime shows it to the user as it is.
    #[error("{0}")]
    Mismatch(String),
    /// The host's links could not be listed.
    #[error("listing links: {0}")]
    Links(#[source] std::io::Error),
    /// The new interface's addresses could not be announced (logged only: the interface works).
    #[error(transparent)]
    Announce(#[from] announce::AnnounceError),
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> AttachError {
    let op = op.into();
    move |source| AttachError::Netlink { op, source }
}

/// Kernel answers (as [`errno`] returns them) that the pod's interface code tells apart.
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EAFNOSUPPORT: i32 = 97;
/// `/proc/sys` refusing a write (read-only mount, no privilege).
const EROFS: i32 = 30;
const EACCES: i32 = 13;
const EPERM: i32 = 1;

/// Everything one pod interface needs.
#[derive(Clone, Debug)]
pub struct AttachSpec {
    /// The namespace holding the bridge; `None` = the agent's own (the host).
    pub host_netns: Option<PathBuf>,
    /// The pod's namespace (`CNI_NETNS`).
    pub pod_netns: PathBuf,
    /// Host end of the veth (see [`host_veth_name`]).
    pub host_veth: String,
    /// Its ownership marker (see [`pod_alias`]).
    pub alias: String,
    /// Interface name in the pod.
    pub pod_ifname: String,
    /// Bridge to enslave the host end to.
    pub bridge: String,
    /// MTU of both ends (the network's).
    pub mtu: u32,
    /// MAC of the pod end: requested by the user or random ([`random_mac`]).
    pub mac: [u8; 6],
    /// The pod end's addresses from the journal, with the subnet's prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Gateways to install default routes through (one per family, only when asked).
    pub default_routes: Vec<IpAddr>,
}

/// Prefix of every host-side veth bridgenet creates. A name, not ownership: the VXLAN ports
/// (`bnvx-<vni>`) share it, and anyone may name a link so; see [`POD_ALIAS_PREFIX`].
pub const HOST_VETH_PREFIX: &str = "bnv";

/// Deterministic host-side veth name for (sandbox, interface): lets DEL and GC find and delete
/// it from the journal alone, after any crash. `bnv` + 12 hex digits = 15 bytes (IFNAMSIZ-1).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    let mut name = String::from(HOST_VETH_PREFIX);
    for b in &digest[..6] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// A random unicast, locally administered MAC (Docker's current behaviour).
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    for b in &mut mac {
        *b = fastrand::u8(..);
    }
    mac[0] = (mac[0] & 0b1111_1100) | 0b0000_0010;
    mac
}

async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, AttachError> {
    link_message(handle, name)
        .await
        .map_err(nl(format!("looking up link {name}")))
}

/// Creates and configures the pod interface. On error the caller runs [`detach`] (which is
/// safe whatever was left half-done).
///
/// Answers once the interface is up with its addresses and routes; its thread then writes the
/// pod's `disable_ipv6` ([`disable_pod_ipv6`]) and announces the addresses ([`announce`]) on
/// its own. Both cost more with every pod on the node: the announcement is a broadcast that
/// every pod on the bridge receives, delivered in the sender's context (with a thousand pods
/// on a bridge it was the largest part of an ADD). Nothing the runtime does next needs them.
pub async fn attach(spec: AttachSpec) -> Result<(), AttachError> {
    let pod_ns = Netns::open(&spec.pod_netns)?;
    let host_ns = spec.host_netns.as_deref().map(Netns::open).transpose()?;
    on_own_thread_then("bridgenet-attach", move || {
        if let Some(ns) = &host_ns {
            ns.enter()?;
        }
        let rt = netns::runtime()?;
        // A netlink socket stays in the namespace it was opened in: this one keeps talking to
        // the host after the thread has moved into the pod.
        let (host, host_end) = rt.block_on(async {
            let handle = connect_handle().map_err(NetnsError::Socket)?;
            let host_end = host_side(&handle, &spec, &pod_ns).await?;
            Ok::<_, AttachError>((handle, host_end))
        })?;
        pod_ns.enter()?;
        let (pod, index) = rt.block_on(async {
            let pod = connect_handle().map_err(NetnsError::Socket)?;
            let index = pod_side(&pod, &spec).await?;
            plug(&host, &spec, host_end).await?;
            Ok::<_, AttachError>((pod, index))
        })?;
        let announcement = move || {
            disable_pod_ipv6(&spec);
            if let Err(e) = rt.block_on(announce(&host, &pod, &spec, host_end, index)) {
                // Refused: the neighbours learn the address from the pod's first packet
                // instead.
                tracing::warn!(veth = %spec.host_veth, error = %e, "announcing a new pod interface");
            }
        };
        Ok(((), announcement))
    })
    .await
}

/// The host end of a new veth and the bridge it goes on.
#[derive(Clone, Copy)]
struct HostEnd {
    veth: u32,
    bridge: u32,
}

/// Creates the veth pair, its peer directly in the pod's namespace (no window in which the pod
/// end sits in the host's), the host end down and on no bridge yet: [`plug`] puts it on the
/// bridge once the pod end is configured.
///
/// That order is what keeps an ADD's cost flat with the pods on the bridge. The bridge
/// re-evaluates every port's state whenever one of its ports is enabled or disabled; a host end
/// enslaved up while its peer was still down was enabled, disabled at the carrier check, then
/// enabled again when the pod end came up. Plugged in last, with the pod end up, it is enabled
/// once. And its IPv6 is off before the kernel hears of it changing state (see
/// [`disable_host_ipv6`]).
async fn host_side(
    handle: &Handle,
    spec: &AttachSpec,
    pod_ns: &Netns,
) -> Result<HostEnd, AttachError> {
    let bridge = link_by_name(handle, &spec.bridge)
        .await?
        .ok_or_else(|| AttachError::NoBridge(spec.bridge.clone()))?;
    // A retried ADD finds its own veth from the interrupted attempt: start clean.
    if let Some(old) = link_by_name(handle, &spec.host_veth).await? {
        metrics::netlink_write(Write::LinkDel);
        handle
            .link()
            .del(old.header.index)
            .execute()
            .await
            .map_err(nl(format!("deleting stale {}", spec.host_veth)))?;
    }
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(spec.pod_ifname.clone())
        .mtu(spec.mtu)
        .address(spec.mac.to_vec())
        .setns_by_fd(pod_ns.as_fd().as_raw_fd())
        .build();
    let msg = LinkVeth::new(&spec.host_veth, &spec.pod_ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(spec.mtu)
        .build();
    metrics::netlink_write(Write::LinkAdd);
    handle.link().add(msg).execute().await.map_err(|e| {
        if errno(&e) == Some(EEXIST) {
            AttachError::Mismatch(format!(
                "interface {} already exists in the pod (another plugin or network uses that name)",
                spec.pod_ifname
            ))
        } else {
            nl(format!(
                "creating veth {} (pod end {} with MAC {})",
                spec.host_veth,
                spec.pod_ifname,
                Mac::new(spec.mac)
            ))(e)
        }
    })?;
    let veth = link_by_name(handle, &spec.host_veth)
        .await?
        .ok_or_else(|| AttachError::Mismatch(format!("{} vanished", spec.host_veth)))?;
    // No IPv6 address on the port even where /proc/sys is read-only (the chart's default,
    // unprivileged agent): best effort, the node may have no IPv6 at all.
    metrics::netlink_write(Write::LinkSet);
    let _ = handle
        .link()
        .set(no_ipv6_addresses(
            LinkUnspec::new_with_index(veth.header.index).build(),
        ))
        .execute()
        .await;
    disable_host_ipv6(spec.host_netns.as_deref(), &spec.host_veth);
    Ok(HostEnd {
        veth: veth.header.index,
        bridge: bridge.header.index,
    })
}

/// Marks the host end as bridgenet's, puts it on the bridge and sets it up, in one request (the
/// kernel ignores IFLA_IFALIAS when a link is created). A kill before this leaves an unmarked
/// veth, which the sweep never takes; the journal names it, and DEL, GC and repair find it by
/// that name.
async fn plug(handle: &Handle, spec: &AttachSpec, end: HostEnd) -> Result<(), AttachError> {
    set_link(
        handle,
        LinkUnspec::new_with_index(end.veth)
            .alias(spec.alias.clone())
            .controller(end.bridge)
            .up()
            .build(),
        format!("putting {} on bridge {}", spec.host_veth, spec.bridge),
    )
    .await
}

/// `/proc/sys/net/ipv6/conf` of the agent's own network namespace, opened once.
static AGENT_IPV6_CONF: OnceLock<Option<OwnedFd>> = OnceLock::new();

/// Turns IPv6 off on a host end (a bridge port needs no addresses of its own), before the
/// kernel hears of the link changing state. With IPv6 on, each such change walked the host's
/// whole IPv6 routing table, where every host end added routes of its own (link-local, and
/// multicast), and each port took a link-local address, with DAD and MLD reports.
///
/// In the agent's own namespace, the file is opened relative to a directory opened once.
/// Every path under `/proc/sys` from its root is looked up among the `net` directories of
/// every namespace that ever opened one, one per pod: at a thousand pods an absolute path costs
/// a walk of a thousand entries. Best effort, like the pod's: without IPv6 on the node there
/// is nothing to turn off.
fn disable_host_ipv6(host_netns: Option<&Path>, veth: &str) {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    use std::io::Write as _;

    if !PROC_SYS_WRITABLE.load(Ordering::Relaxed) {
        return;
    }
    if host_netns.is_some() {
        return disable_ipv6_by_path(veth);
    }
    let conf = AGENT_IPV6_CONF.get_or_init(|| {
        open(
            "/proc/sys/net/ipv6/conf",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()
    });
    // No such directory: no IPv6 on the node.
    let Some(dir) = conf else { return };
    metrics::netlink_write(Write::Sysctl);
    let key = format!("{veth}/disable_ipv6");
    note_proc_sys(
        openat(
            dir,
            key.as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .and_then(|fd| std::fs::File::from(fd).write_all(b"1")),
    );
}

/// Writes `disable_ipv6` of interface `ifname` of the calling thread's namespace through the
/// absolute path (the cost [`disable_host_ipv6`] describes).
fn disable_ipv6_by_path(ifname: &str) {
    metrics::netlink_write(Write::Sysctl);
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    note_proc_sys(std::fs::write(path, "1"));
}

/// Writes `disable_ipv6` on the pod's interface of an IPv4-only network, from a thread in the
/// pod's namespace, as Docker does; until then its IPv6 has no address (see [`pod_side`]).
/// After the answer, because it is the one part of an ADD whose cost grows with the pods on
/// the node: the first path a namespace opens under `/proc/sys` is looked up among the `net`
/// directories of every namespace that opened one (see [`disable_host_ipv6`]), about 0.5 ms
/// at a thousand. Best effort: IPv6 may be disabled in the pod already, and `/proc/sys` is
/// read-only to an agent that is not privileged.
fn disable_pod_ipv6(spec: &AttachSpec) {
    if spec.addresses.iter().any(|(ip, _)| ip.is_ipv6())
        || !PROC_SYS_WRITABLE.load(Ordering::Relaxed)
    {
        return;
    }
    disable_ipv6_by_path(&spec.pod_ifname);
}

/// Whether `/proc/sys` took writes so far: an agent without privileges sees it read-only and
/// stops trying after the first refusal (each try costs a path walk, see [`disable_host_ipv6`]).
static PROC_SYS_WRITABLE: AtomicBool = AtomicBool::new(true);

fn note_proc_sys(result: std::io::Result<()>) {
    if let Err(e) = result
        && matches!(e.raw_os_error(), Some(EROFS | EACCES | EPERM))
        && PROC_SYS_WRITABLE.swap(false, Ordering::Relaxed)
    {
        tracing::info!(error = %e, "/proc/sys is read-only to the agent: pod interfaces on IPv4-only networks get no IPv6 address, but keep IPv6 enabled (run the agent privileged for disable_ipv6)");
    }
}

/// `msg` with IPv6 address generation off (`addr_gen_mode` none): the link takes no IPv6
/// address of its own, through netlink, which needs no write access to `/proc/sys`.
fn no_ipv6_addresses(mut msg: LinkMessage) -> LinkMessage {
    msg.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    msg
}

/// One `RTM_SETLINK`, counted as a kernel write.
async fn set_link(handle: &Handle, msg: LinkMessage, op: String) -> Result<(), AttachError> {
    metrics::netlink_write(Write::LinkSet);
    handle.link().set(msg).execute().await.map_err(nl(op))
}

async fn pod_side(handle: &Handle, spec: &AttachSpec) -> Result<u32, AttachError> {
    let link = link_by_name(handle, &spec.pod_ifname)
        .await?
        .ok_or_else(|| {
            AttachError::Mismatch(format!("{} vanished from the pod", spec.pod_ifname))
        })?;
    let index = link.header.index;
    let ipv4_only = !spec.addresses.iter().any(|(ip, _)| ip.is_ipv6());
    for (ip, prefix) in &spec.addresses {
        let mut req = handle.address().add(index, *ip, *prefix);
        if ip.is_ipv6() {
            // The journal already guarantees the address is unique on the network; DAD would
            // only keep it unusable (tentative) for a second or two after the pod starts.
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        metrics::netlink_write(Write::AddrAdd);
        match req.execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => {
                return Err(nl(format!("adding {ip}/{prefix} to {}", spec.pod_ifname))(
                    e,
                ));
            }
        }
    }
    // On an IPv4-only network the interface takes no IPv6 address at all, as Docker's
    // containers' interfaces on such networks: no link-local address, hence no MLD reports,
    // router solicitations or DAD probes, which every pod on the bridge would receive (at a
    // thousand pods on a node that doubled the time of each ADD). Address generation is
    // turned off through netlink, with the link-up: the link has no carrier until its host
    // end is plugged in, and the kernel configures IPv6 addresses only once it has.
    // `disable_ipv6` (Docker's way, which also refuses router advertisements) follows after
    // the answer ([`disable_pod_ipv6`]).
    let up = LinkUnspec::new_with_index(index).up().build();
    metrics::netlink_write(Write::LinkSet);
    let result = if ipv4_only {
        match handle
            .link()
            .set(no_ipv6_addresses(up.clone()))
            .execute()
            .await
        {
            // No IPv6 in this kernel at all.
            Err(e) if errno(&e) == Some(EAFNOSUPPORT) => handle.link().set(up).execute().await,
            other => other,
        }
    } else {
        handle.link().set(up).execute().await
    };
    result.map_err(nl(format!("setting {} up", spec.pod_ifname)))?;
    for gw in &spec.default_routes {
        let msg = match gw {
            IpAddr::V4(v4) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .output_interface(index)
                .gateway(*v4)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .output_interface(index)
                .gateway(*v6)
                .build(),
        };
        metrics::netlink_write(Write::RouteAdd);
        match handle.route().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {
                return Err(AttachError::Mismatch(format!(
                    "the pod already has a default route; cannot add one via {gw} on {}",
                    spec.pod_ifname
                )));
            }
            Err(e) => return Err(nl(format!("adding default route via {gw}"))(e)),
        }
    }
    Ok(index)
}

/// Announces the pod's addresses ([`announce::send`], from the calling thread, which is in the
/// pod's namespace) once the host end's bridge port forwards and the pod end is operational.
/// Before that, the bridge drops what the pod sends, or the pod end does: it was set up
/// before it had a carrier, and the kernel gives it a real queue only when its link watcher
/// handles the carrier coming on (a GET of the link handles it at once).
async fn announce(
    host: &Handle,
    pod: &Handle,
    spec: &AttachSpec,
    end: HostEnd,
    index: u32,
) -> Result<(), AttachError> {
    let ready = match poll_link(host, end.veth, &spec.host_veth, is_forwarding).await? {
        Some(true) => poll_link(pod, index, &spec.pod_ifname, is_oper_up)
            .await?
            .unwrap_or(false),
        Some(false) => false,
        // Deleted already (a DEL right after the ADD): nothing to announce.
        None => return Ok(()),
    };
    if !ready {
        tracing::warn!(veth = %spec.host_veth, "veth not forwarding, or pod end not up, after 1s; announcing anyway");
    }
    let addresses: Vec<IpAddr> = spec.addresses.iter().map(|(ip, _)| *ip).collect();
    Ok(announce::send(
        &spec.pod_ifname,
        index,
        spec.mac,
        &addresses,
    )?)
}

/// Polls link `index` (named `name`, for errors) until `ready` holds, every 2 ms for about a
/// second: whether it came to hold, or `None` if the link is gone.
async fn poll_link(
    handle: &Handle,
    index: u32,
    name: &str,
    ready: fn(&LinkMessage) -> bool,
) -> Result<Option<bool>, AttachError> {
    for _ in 0..500 {
        let link = match handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
        {
            Ok(Some(link)) => link,
            Ok(None) => return Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => return Ok(None),
            Err(e) => return Err(nl(format!("reading the state of {name}"))(e)),
        };
        if ready(&link) {
            return Ok(Some(true));
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    Ok(Some(false))
}

/// Whether a link is operationally up.
fn is_oper_up(link: &LinkMessage) -> bool {
    link.attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::OperState(State::Up)))
}

/// Whether a link is a bridge port that forwards. The kernel turns a port forwarding once it
/// has handled the carrier coming up on both ends, right after the host end is plugged in.
fn is_forwarding(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| {
            matches!(i, LinkInfo::PortData(InfoPortData::BridgePort(port))
                    if port.contains(&InfoBridgePort::State(BridgePortState::Forwarding)))
        }),
        _ => false,
    })
}

/// Removes the pod interface by deleting its host end (the kernel deletes the pair). Gone
/// already — pod namespace destroyed, repeated DEL — is success.
pub async fn detach(host_netns: Option<&Path>, host_veth: &str) -> Result<(), AttachError> {
    let name = host_veth.to_owned();
    let result = in_netns(host_netns, move |handle| async move {
        if let Some(link) = link_by_name(&handle, &name).await? {
            metrics::netlink_write(Write::LinkDel);
            match handle.link().del(link.header.index).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(ENODEV) => {}
                Err(e) => return Err(nl(format!("deleting {name}"))(e)),
            }
        }
        Ok(())
    })
    .await;
    // The host namespace path may be gone only in tests (their "node" was deleted): nothing
    // left to delete then.
    match result {
        Err(AttachError::Netns(NetnsError::Open { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Puts a pod's host veth (index `veth`) back on bridge `bridge`, up, with its marker: one
/// request. A bridge deleted and re-created has lost its ports; this is all the pod needs,
/// its own end being untouched.
pub async fn reattach(
    host_netns: Option<&Path>,
    veth: u32,
    bridge: u32,
    alias: String,
) -> Result<(), AttachError> {
    in_netns(host_netns, move |handle| async move {
        set_link(
            &handle,
            LinkUnspec::new_with_index(veth)
                .controller(bridge)
                .alias(alias)
                .up()
                .build(),
            format!("putting veth {veth} back on bridge {bridge}"),
        )
        .await
    })
    .await
}

/// What CHECK compares.
#[derive(Clone, Debug)]
pub struct Expected {
    /// The host end, which must exist in the host namespace.
    pub host_veth: String,
    /// Bridge it must be enslaved to.
    pub bridge: String,
    /// The pod end, which must exist and be up in the pod's namespace.
    pub pod_ifname: String,
    /// Addresses the pod interface must carry.
    pub addresses: Vec<IpAddr>,
}

/// Verifies an attachment is intact (CNI CHECK).
pub async fn check(
    host_netns: Option<&Path>,
    pod_netns: &Path,
    exp: Expected,
) -> Result<(), AttachError> {
    let e2 = exp.clone();
    in_netns(host_netns, move |handle| async move {
        let veth = link_by_name(&handle, &e2.host_veth).await?.ok_or_else(|| {
            AttachError::Mismatch(format!("host veth {} is missing", e2.host_veth))
        })?;
        let bridge = link_by_name(&handle, &e2.bridge)
            .await?
            .ok_or_else(|| AttachError::NoBridge(e2.bridge.clone()))?;
        let master = veth.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(i) => Some(*i),
            _ => None,
        });
        if master != Some(bridge.header.index) {
            return Err(AttachError::Mismatch(format!(
                "host veth {} is not attached to bridge {}",
                e2.host_veth, e2.bridge
            )));
        }
        Ok(())
    })
    .await?;
    in_netns(Some(pod_netns), move |handle| async move {
        let link = link_by_name(&handle, &exp.pod_ifname)
            .await?
            .ok_or_else(|| {
                AttachError::Mismatch(format!("{} is missing in the pod", exp.pod_ifname))
            })?;
        if !link.header.flags.contains(LinkFlags::Up) {
            return Err(AttachError::Mismatch(format!("{} is down", exp.pod_ifname)));
        }
        let mut req = handle
            .address()
            .get()
            .set_link_index_filter(link.header.index)
            .execute();
        let mut have = Vec::new();
        while let Some(msg) = req.try_next().await.map_err(nl("listing addresses"))? {
            if msg.header.family == AddressFamily::Inet || msg.header.family == AddressFamily::Inet6
            {
                for attr in msg.attributes {
                    if let AddressAttribute::Address(a) = attr {
                        have.push(a);
                    }
                }
            }
        }
        for ip in &exp.addresses {
            if !have.contains(ip) {
                return Err(AttachError::Mismatch(format!(
                    "{} lacks address {ip}",
                    exp.pod_ifname
                )));
            }
        }
        Ok(())
    })
    .await
}

/// A link of the host namespace as the sweep and repair see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLink {
    /// Interface index: what repair and deletion address.
    pub index: u32,
    /// Interface name (`IFLA_IFNAME`), for a veth the one [`host_veth_name`] gave it.
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, `vxlan`, ...); empty when the kernel gives none.
    pub kind: String,
    /// `IFLA_IFALIAS`, the ownership marker (see [`pod_alias`]); `None` when empty.
    pub alias: Option<String>,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

impl HostLink {
    /// Whether this is a host veth bridgenet marked as a pod's (kind and marker, never the
    /// name alone).
    pub fn is_pod_veth(&self) -> bool {
        self.kind == "veth"
            && self
                .alias
                .as_deref()
                .is_some_and(|a| a.starts_with(POD_ALIAS_PREFIX))
    }
}

fn host_link(msg: LinkMessage) -> HostLink {
    let mut link = HostLink {
        index: msg.header.index,
        name: String::new(),
        kind: String::new(),
        alias: None,
        master: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a),
            LinkAttribute::Controller(m) => link.master = Some(m),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        link.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Every link of `netns` (one dump).
pub async fn host_links(netns: Option<&Path>) -> Result<Vec<HostLink>, AttachError> {
    in_netns(netns, move |_| async move {
        links::dump(host_link).await.map_err(AttachError::Links)
    })
    .await
}
