//! Links read off raw rtnetlink sockets, keeping only what the agent reads of a link: a dump
//! of every link of a namespace, and notice of marked links deleted or set down.
//!
//! rtnetlink parses every attribute of every link it hands on (statistics, per-family
//! settings, bridge port state...), about 17 KiB of heap per link. A dump holds them all until
//! it ends: on a node with a thousand pod veths, each sweep, repair pass or network change took
//! 17 MiB at once, and glibc kept most of the freed heap for the process. The link monitors
//! parsed so every notification the kernel sends while pods come and go, several per veth.
//! Here a dump parses, of each link, only its name, MTU, MAC, bridge, alias and kind (with its
//! kind's settings, e.g. a VXLAN's): a few hundred bytes; the monitors read two fields of a
//! notification in place.

use futures::Stream;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket, protocols::NETLINK_ROUTE};

use super::nlattr;

/// Kernel ABI (`linux/netlink.h`, `linux/rtnetlink.h`, `linux/if_link.h`).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
/// `RTNLGRP_LINK`: the multicast group of link notifications.
const RTNLGRP_LINK: u32 = 1;
/// `IFF_UP`, in `ifinfomsg.ifi_flags` (bytes 8..12 of the message body).
const IFF_UP: u32 = 1;
const ENOBUFS: i32 = 105;
const IFINFOMSG_LEN: usize = 16;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
/// `NLA_F_NESTED`, as the kernel marks a nested attribute.
const NLA_F_NESTED: u16 = 0x8000;

/// Every link of the calling thread's network namespace, each passed through `keep` as it is
/// read, with only the attributes named above. Errors are the socket's or the kernel's
/// (`raw_os_error` is the errno), or `InvalidData` for an answer that does not parse.
pub async fn dump<T>(mut keep: impl FnMut(LinkMessage) -> T) -> std::io::Result<Vec<T>> {
    let mut request = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0; request.header.length as usize];
    request.serialize(&mut buf);
    let mut out = Vec::new();
    nlattr::dump(&buf, |kind, body| {
        if kind == RTM_NEWLINK {
            out.push(keep(slim(body)?));
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

/// A stream that yields whenever a link whose marker alias starts with `marker` is deleted or
/// set down in the calling thread's network namespace (someone ran `ip link del` or `ip link
/// set down` on a bridge, an overlay port or a pod's veth), so drift is repaired at once rather
/// than at the next periodic resync. It also yields when the kernel dropped notifications
/// (the socket's buffer was full): one of them may have been such a loss. Empty (periodic
/// resync only) when the monitor cannot be opened.
pub fn marked_link_losses(marker: &'static str) -> impl Stream<Item = ()> + Send + 'static {
    let (tx, rx) = futures::channel::mpsc::unbounded::<()>();
    let socket = (|| {
        let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
        socket.socket_mut().bind_auto()?;
        socket.socket_mut().add_membership(RTNLGRP_LINK)?;
        Ok::<_, std::io::Error>(socket)
    })();
    match socket {
        Ok(socket) => {
            tokio::spawn(async move {
                loop {
                    let lost = match socket.recv_from_full().await {
                        Ok((datagram, _)) => loses_marked_link(&datagram, marker),
                        Err(e) if e.raw_os_error() == Some(ENOBUFS) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "link monitor stopped; drift is repaired by the periodic resync only");
                            return;
                        }
                    };
                    if lost && tx.unbounded_send(()).is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot monitor link deletions; drift is repaired by the periodic resync only")
        }
    }
    rx
}

/// Whether link notifications `datagram` report a link marked `marker…` deleted, or down.
/// (Our own changes never leave a marked link down for long, and a pass over unchanged state
/// writes nothing, so a monitor cannot feed itself.)
fn loses_marked_link(datagram: &[u8], marker: &str) -> bool {
    nlattr::messages(datagram).any(|(kind, body)| {
        let deleted = match kind {
            RTM_DELLINK => true,
            RTM_NEWLINK => false,
            _ => return false,
        };
        let up = nlattr::u32_at(body, 8).is_some_and(|flags| flags & IFF_UP != 0);
        let marked = nlattr::attributes(body.get(IFINFOMSG_LEN..).unwrap_or_default())
            .any(|a| a.kind == IFLA_IFALIAS && a.value.starts_with(marker.as_bytes()));
        marked && (deleted || !up)
    })
}

/// The link message `body` (header and attributes) with only the attributes the agent reads,
/// parsed.
fn slim(body: &[u8]) -> std::io::Result<LinkMessage> {
    let header = body
        .get(..IFINFOMSG_LEN)
        .ok_or_else(|| invalid("short link message"))?;
    let mut kept = header.to_vec();
    for attr in nlattr::attributes(&body[IFINFOMSG_LEN..]) {
        match attr.kind {
            IFLA_ADDRESS | IFLA_IFNAME | IFLA_MTU | IFLA_MASTER | IFLA_IFALIAS => {
                kept.extend_from_slice(attr.padded);
            }
            IFLA_LINKINFO => {
                // The kind and its settings; not the port data a bridge port carries (its
                // STP state, timers, flags: forty attributes).
                let mut info = Vec::new();
                for inner in nlattr::attributes(attr.value) {
                    if matches!(inner.kind, IFLA_INFO_KIND | IFLA_INFO_DATA) {
                        info.extend_from_slice(inner.padded);
                    }
                }
                let len = u16::try_from(4 + info.len())
                    .map_err(|_| invalid("link info longer than an attribute holds"))?;
                kept.extend_from_slice(&len.to_ne_bytes());
                kept.extend_from_slice(&(IFLA_LINKINFO | NLA_F_NESTED).to_ne_bytes());
                kept.extend_from_slice(&info);
            }
            _ => {}
        }
    }
    LinkMessage::parse(kept.as_slice()).map_err(|e| invalid(&e.to_string()))
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("link dump: {what}"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_route::link::{
        InfoBridgePort, InfoKind, InfoPortData, InfoPortKind, LinkAttribute, LinkInfo, Stats64,
    };

    /// A bridge port as the kernel describes it, statistics and port data included: the slim
    /// message keeps its name, MTU, bridge, alias and kind, and nothing else.
    #[test]
    fn keeps_what_the_agent_reads_and_drops_the_rest() {
        let mut full = LinkMessage::default();
        full.header.index = 7;
        full.attributes = vec![
            LinkAttribute::IfName("bnv0123456789ab".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Stats64(Stats64::default()),
            LinkAttribute::Controller(3),
            LinkAttribute::IfAlias("bridgenet/pod".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Cost(2)])),
            ]),
            LinkAttribute::Carrier(1),
        ];
        let mut body = vec![0; full.buffer_len()];
        full.emit(&mut body);
        let slim = slim(&body).unwrap();
        assert_eq!(slim.header.index, 7);
        assert_eq!(
            slim.attributes,
            vec![
                LinkAttribute::IfName("bnv0123456789ab".into()),
                LinkAttribute::Mtu(1450),
                LinkAttribute::Controller(3),
                LinkAttribute::IfAlias("bridgenet/pod".into()),
                LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
            ]
        );
    }

    /// One link notification as the kernel sends it: netlink header and link message.
    fn notification(kind: u16, alias: &str, up: bool) -> Vec<u8> {
        let mut link = LinkMessage::default();
        if up {
            link.header.flags = netlink_packet_route::link::LinkFlags::Up;
        }
        link.attributes = vec![
            LinkAttribute::IfName("br-a".into()),
            LinkAttribute::Stats64(Stats64::default()),
            LinkAttribute::IfAlias(alias.into()),
        ];
        let mut body = vec![0; link.buffer_len()];
        link.emit(&mut body);
        let mut message = Vec::new();
        message.extend(
            u32::try_from(nlattr::NLMSG_HDRLEN + body.len())
                .unwrap()
                .to_ne_bytes(),
        );
        message.extend(kind.to_ne_bytes());
        message.extend([0; 10]);
        message.extend(body);
        message
    }

    #[test]
    fn a_marked_link_deleted_or_down_is_a_loss_and_nothing_else_is() {
        let marker = "bridgenet/";
        let deleted = notification(RTM_DELLINK, "bridgenet/red", true);
        let down = notification(RTM_NEWLINK, "bridgenet/red", false);
        let up = notification(RTM_NEWLINK, "bridgenet/red", true);
        let foreign = notification(RTM_DELLINK, "kube-bridge", false);
        assert!(loses_marked_link(&deleted, marker));
        assert!(loses_marked_link(&down, marker));
        assert!(!loses_marked_link(&up, marker));
        assert!(!loses_marked_link(&foreign, marker));
        assert!(!loses_marked_link(&deleted, "bridgenet-pod/"));
        // Any of several notifications in one datagram.
        assert!(loses_marked_link(&[up.clone(), down].concat(), marker));
        assert!(!loses_marked_link(&[up, foreign].concat(), marker));
        assert!(!loses_marked_link(&deleted[..20], marker));
    }

    #[test]
    fn a_truncated_message_is_an_error_not_a_panic() {
        assert!(slim(&[0; 8]).is_err());
        let mut body = vec![0; 16];
        body.extend_from_slice(&[200, 0, 3, 0, b'x']);
        // An attribute claiming more than there is ends the attributes.
        assert!(slim(&body).unwrap().attributes.is_empty());
    }

    /// The kernel's own notifications, in a throwaway namespace: a marked link set down and
    /// deleted is reported, a foreign link deleted is not.
    #[test]
    #[ignore = "needs root"]
    fn the_kernel_reports_marked_links_lost() {
        let ns = crate::dataplane::netns::Throwaway::new("linkmon");
        let ip = {
            let ns = ns.name.clone();
            move |args: &str| {
                let ok = std::process::Command::new("ip")
                    .args(["-n", &ns])
                    .args(args.split(' '))
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "ip {args}");
            }
        };
        let seen = ns
            .run(move || async move {
                use futures::StreamExt;
                let mut losses = marked_link_losses("bridgenet/");
                let mut next = async || {
                    tokio::time::timeout(std::time::Duration::from_millis(500), losses.next())
                        .await
                        .is_ok()
                };
                ip("link add foreign type veth peer name foreign-peer");
                ip("link set foreign up");
                ip("link del foreign");
                let foreign = next().await;
                ip("link add br-a type bridge");
                ip("link set br-a alias bridgenet/a up");
                let created = next().await;
                ip("link set br-a down");
                let down = next().await;
                while next().await {}
                ip("link del br-a");
                let deleted = next().await;
                (foreign, created, down, deleted)
            })
            .unwrap();
        assert_eq!(seen, (false, false, true, true));
    }
}
