//! The real [`Netlink`]: rtnetlink requests on a socket opened in the caller's network
//! namespace, and sysctls written through `/proc/sys` (per network namespace as well: the file
//! is opened by the calling thread, so it belongs to that thread's namespace). Every request
//! that changes kernel state is counted ([`crate::metrics`]): a no-change resync must count
//! none on a real node, as it writes nothing through the recording fake.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVxlan};

use super::netlink::{Link, LinkChange, LinkKind, Netlink, NetlinkError, NewLink, VxlanConfig};
use crate::metrics::{self, Write};

/// The [`Netlink`] of a real kernel: one rtnetlink socket, bound to the network namespace of
/// the thread that opened it.
#[derive(Clone, Debug)]
pub struct Rtnl {
    handle: Handle,
}

impl Rtnl {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its
    /// connection task on the current tokio runtime.
    pub fn connect() -> std::io::Result<Self> {
        connect_handle().map(|handle| Rtnl { handle })
    }

    /// The underlying rtnetlink handle, for requests outside the [`Netlink`] trait.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Sends one request and waits for its acknowledgement.
    async fn send(
        &mut self,
        op: &str,
        mut msg: NetlinkMessage<RouteNetlinkMessage>,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        msg.header.flags = flags;
        let mut responses = self
            .handle
            .request(msg)
            .map_err(|e| NetlinkError::new(op, e, None))?;
        while let Some(reply) = futures::StreamExt::next(&mut responses).await {
            if let NetlinkPayload::Error(e) = reply.payload {
                let errno = e.code.map(|c| -c.get());
                return Err(NetlinkError::new(op, e.to_io(), errno));
            }
        }
        Ok(())
    }
}

/// Opens a netlink socket in the calling thread's network namespace and spawns its connection
/// task on the current tokio runtime. The socket stays bound to that namespace whatever the
/// thread does afterwards.
pub fn connect_handle() -> std::io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

fn nl_err(op: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
    let errno = errno(&e);
    NetlinkError::new(op, e, errno)
}

/// The errno of the kernel's answer, when the error is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// One link by name; `None` when the kernel has none (ENODEV).
pub(crate) async fn link_message(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    const ENODEV: i32 = 19;
    match handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        other => other,
    }
}

fn parse_link(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: LinkKind::Other(String::new()),
        alias: None,
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a),
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&a);
                link.mac = Some(mac);
            }
            LinkAttribute::Controller(m) => link.master = Some(m),
            LinkAttribute::LinkInfo(infos) => {
                let mut kind = None;
                let mut vx = VxlanConfig {
                    vni: 0,
                    local: None,
                    port: 0,
                    learning: true,
                };
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind = Some(k),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            for a in attrs {
                                match a {
                                    InfoVxlan::Id(id) => vx.vni = id,
                                    InfoVxlan::Local(ip) => vx.local = Some(IpAddr::V4(ip)),
                                    InfoVxlan::Local6(ip) => vx.local = Some(IpAddr::V6(ip)),
                                    InfoVxlan::Port(p) => vx.port = p,
                                    InfoVxlan::Learning(l) => vx.learning = l,
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                link.kind = match kind {
                    Some(InfoKind::Bridge) => LinkKind::Bridge,
                    Some(InfoKind::Vxlan) => LinkKind::Vxlan(vx),
                    Some(other) => LinkKind::Other(other.to_string()),
                    None => LinkKind::Other(String::new()),
                };
            }
            _ => {}
        }
    }
    link
}

fn flood_message(index: u32, dst: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.kind = RouteType::Unspec;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
    msg.attributes
        .push(NeighbourAttribute::Destination(match dst {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    msg
}

impl Netlink for Rtnl {
    async fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        // On a socket of its own, in the namespace of the calling thread: the handle's, since
        // an `Rtnl` never leaves the namespace it was opened in.
        super::links::dump(parse_link)
            .await
            .map_err(|e| NetlinkError::new("dump links", &e, e.raw_os_error()))
    }

    async fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        match link_message(&self.handle, name).await {
            Ok(msg) => Ok(msg.map(parse_link)),
            Err(e) => {
                let e = nl_err(format!("get link {name}"), e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    async fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(format!("dump addresses of link {index}"), e))?;
        let mut out = Vec::new();
        for msg in msgs.into_iter().filter(|m| m.header.index == index) {
            let mut local = None;
            let mut address = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address)
                && let Ok(net) = IpNet::new(ip, msg.header.prefix_len)
            {
                out.push(net);
            }
        }
        Ok(out)
    }

    async fn flood_entries(&mut self, index: u32) -> Result<Vec<IpAddr>, NetlinkError> {
        // Like `links`: on a socket of its own, in the handle's namespace.
        super::fdb::flood_entries(index).await.map_err(|e| {
            NetlinkError::new(format!("dump fdb of link {index}"), &e, e.raw_os_error())
        })
    }

    async fn create_link(&mut self, link: &NewLink) -> Result<(), NetlinkError> {
        metrics::netlink_write(Write::LinkAdd);
        let msg = match &link.kind {
            LinkKind::Bridge => {
                let mut b = LinkBridge::new(&link.name).mtu(link.mtu);
                if let Some(mac) = link.mac {
                    b = b.address(mac.to_vec());
                }
                b.build()
            }
            LinkKind::Vxlan(c) => {
                let mut b = LinkVxlan::new(&link.name, c.vni)
                    .port(c.port)
                    .learning(c.learning)
                    .mtu(link.mtu);
                b = match c.local {
                    Some(IpAddr::V4(ip)) => b.local(ip),
                    Some(IpAddr::V6(ip)) => b.local6(ip),
                    None => b,
                };
                b.build()
            }
            LinkKind::Other(kind) => {
                return Err(NetlinkError::new(
                    format!("create link {}", link.name),
                    format!("the data plane does not create links of kind {kind:?}"),
                    None,
                ));
            }
        };
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("create link {}", link.name), e))
    }

    async fn change_link(&mut self, index: u32, change: &LinkChange) -> Result<(), NetlinkError> {
        metrics::netlink_write(Write::LinkSet);
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(alias) = &change.alias {
            b = b.alias(alias.clone());
        }
        if let Some(mtu) = change.mtu {
            b = b.mtu(mtu);
        }
        if let Some(mac) = change.mac {
            b = b.address(mac.to_vec());
        }
        if let Some(master) = change.master {
            b = b.controller(master);
        }
        if change.up {
            b = b.up();
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| nl_err(format!("change link {index} ({change:?})"), e))
    }

    async fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        metrics::netlink_write(Write::LinkDel);
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| nl_err(format!("delete link {index}"), e))
    }

    async fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        metrics::netlink_write(Write::AddrAdd);
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            // Duplicate address detection would fail by design: the anycast gateway holds the
            // same address on every node (its NS never crosses the overlay, but DAD's delay
            // would still hold the address back).
            req.message_mut().header.flags = AddressHeaderFlags::Nodad;
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| nl_err(format!("add address {addr} to link {index}"), e))
    }

    async fn delete_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        metrics::netlink_write(Write::AddrDel);
        let msg = match addr.addr() {
            IpAddr::V4(ip) => rtnetlink::AddressMessageBuilder::<std::net::Ipv4Addr>::new()
                .index(index)
                .address(ip, addr.prefix_len())
                .build(),
            IpAddr::V6(ip) => rtnetlink::AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(index)
                .address(ip, addr.prefix_len())
                .build(),
        };
        self.handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("delete address {addr} from link {index}"), e))
    }

    async fn append_flood(&mut self, index: u32, dst: IpAddr) -> Result<(), NetlinkError> {
        metrics::netlink_write(Write::NeighAdd);
        // `bridge fdb append 00:00:00:00:00:00 dev <vxlan> dst <peer>`: NLM_F_APPEND adds one
        // more remote to the all-zeros entry instead of replacing it.
        let msg =
            NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(flood_message(index, dst)));
        self.send(
            &format!("append flood entry {dst} to link {index}"),
            msg,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        )
        .await
    }

    async fn delete_flood(&mut self, index: u32, dst: IpAddr) -> Result<(), NetlinkError> {
        metrics::netlink_write(Write::NeighDel);
        let msg =
            NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(flood_message(index, dst)));
        self.send(
            &format!("delete flood entry {dst} from link {index}"),
            msg,
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .await
    }

    async fn read_sysctl(&mut self, key: &str) -> Result<String, NetlinkError> {
        let path = sysctl_path(key);
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| NetlinkError::new(format!("read {path}"), &e, e.raw_os_error()))
    }

    async fn write_sysctl(&mut self, key: &str, value: &str) -> Result<(), NetlinkError> {
        metrics::netlink_write(Write::Sysctl);
        let path = sysctl_path(key);
        std::fs::write(&path, value).map_err(|e| {
            NetlinkError::new(format!("write {value} to {path}"), &e, e.raw_os_error())
        })
    }
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.trim_start_matches('/'))
}
