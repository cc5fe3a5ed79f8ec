//! Announcing a new pod interface's addresses to its bridge: one gratuitous ARP per IPv4
//! address, one unsolicited neighbour advertisement per IPv6 address, sent from the pod's
//! interface as the kernel's `arp_notify` / `ndisc_notify` would send them.
//!
//! Sent from sockets opened in the pod's namespace rather than by the kernel. The kernel sends
//! its announcements from a netdev notifier, with the rtnl lock held; the bridge hands the
//! broadcast to every pod on it before the send returns. With a thousand pods on a bridge that
//! delivery took milliseconds, and every netlink request on the node (every other ADD and DEL)
//! waited for it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType};
use socket2::{Domain, Protocol, Socket, Type};

/// Why an announcement could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The interface has no link-layer address entry (it vanished).
    #[error("{0} has no link-layer address in the pod")]
    NoLink(String),
    /// A socket call failed.
    #[error("{op} on {ifname}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The pod's interface.
        ifname: String,
        /// What the kernel said.
        source: std::io::Error,
    },
}

/// ff02::1, every node on the link.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A gratuitous ARP (a broadcast request for the sender's own address, the form Linux's
/// `arp_notify` sends): Ethernet header and ARP payload.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // Ethernet, IPv4, address lengths 6 and 4, request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address: zeros.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement for `ip` (ICMPv6 message, checksum left to the
/// kernel): override set, solicited clear, with the target link-layer address option.
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = 136;
    // Flags: O (override).
    m[4] = 0x20;
    m[8..24].copy_from_slice(&ip.octets());
    // Option 2 (target link-layer address), length 1 (8 octets).
    m[24] = 2;
    m[25] = 1;
    m[26..32].copy_from_slice(&mac);
    m
}

/// Sends the announcements for `addresses` from `ifname` (index `index`) in the calling
/// thread's network namespace.
pub fn send(
    ifname: &str,
    index: u32,
    mac: [u8; 6],
    addresses: &[IpAddr],
) -> Result<(), AnnounceError> {
    let io = |op: &'static str| {
        move |source: std::io::Error| AnnounceError::Io {
            op,
            ifname: ifname.to_owned(),
            source,
        }
    };
    let v4: Vec<Ipv4Addr> = addresses
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    if !v4.is_empty() {
        let link = link_addr(ifname)?;
        let socket = nix::sys::socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| io("opening a packet socket")(e.into()))?;
        for ip in v4 {
            nix::sys::socket::sendto(
                socket.as_raw_fd(),
                &gratuitous_arp(mac, ip),
                &link,
                MsgFlags::empty(),
            )
            .map_err(|e| io("sending a gratuitous ARP")(e.into()))?;
        }
    }
    for a in addresses {
        let IpAddr::V6(ip) = a else { continue };
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .map_err(io("opening an ICMPv6 socket"))?;
        // Hop limit 255, or receivers discard it as not from the link.
        socket
            .set_multicast_hops_v6(255)
            .and_then(|()| socket.set_multicast_if_v6(index))
            .map_err(io("setting up an ICMPv6 socket"))?;
        // The advertisement's source is the address itself, as the kernel's.
        socket
            .bind(&SocketAddrV6::new(*ip, 0, 0, 0).into())
            .map_err(io("binding an ICMPv6 socket"))?;
        socket
            .send_to(
                &unsolicited_na(mac, *ip),
                &SocketAddrV6::new(ALL_NODES, 0, 0, index).into(),
            )
            .map_err(io("sending an unsolicited neighbour advertisement"))?;
    }
    Ok(())
}

/// The interface's link-layer address (its index, for the packet socket's destination).
fn link_addr(ifname: &str) -> Result<LinkAddr, AnnounceError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| AnnounceError::Io {
        op: "listing interfaces",
        ifname: ifname.to_owned(),
        source: e.into(),
    })?;
    addrs
        .filter(|a| a.interface_name == ifname)
        .find_map(|a| a.address.and_then(|s| s.as_link_addr().copied()))
        .ok_or_else(|| AnnounceError::NoLink(ifname.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x14, 0x00, 0x09];

    #[test]
    fn gratuitous_arp_is_a_broadcast_request_for_its_own_address() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(172, 20, 0, 9));
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &MAC, "from the pod");
        assert_eq!(&f[12..14], &[0x08, 0x06], "ARP");
        assert_eq!(
            &f[14..22],
            &[0, 1, 8, 0, 6, 4, 0, 1],
            "Ethernet/IPv4 request"
        );
        assert_eq!(&f[22..28], &MAC, "sender MAC");
        assert_eq!(&f[28..32], &[172, 20, 0, 9], "sender IP");
        assert_eq!(&f[32..38], &[0; 6], "target MAC unknown");
        assert_eq!(&f[38..42], &[172, 20, 0, 9], "target IP = sender IP");
    }

    #[test]
    fn unsolicited_na_overrides_and_carries_the_mac() {
        let ip = Ipv6Addr::new(0xfd00, 0x29, 0x16, 0, 0, 0, 0, 9);
        let m = unsolicited_na(MAC, ip);
        assert_eq!(m[0], 136, "neighbour advertisement");
        assert_eq!(m[1], 0, "code 0");
        assert_eq!(
            &m[4..8],
            &[0x20, 0, 0, 0],
            "override only: not solicited, not a router"
        );
        assert_eq!(&m[8..24], &ip.octets(), "target");
        assert_eq!(&m[24..26], &[2, 1], "target link-layer address option");
        assert_eq!(&m[26..32], &MAC);
    }
}
