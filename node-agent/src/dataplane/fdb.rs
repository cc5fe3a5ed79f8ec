//! The flood entries of one VXLAN port, read with a dump that the kernel filters to that port.
//!
//! An AF_BRIDGE neighbour dump with the usual `ndmsg` header (what rtnetlink's
//! `neighbours().get()` sends) answers with the whole forwarding database of the namespace:
//! every pod's MAC on every bridge and every device's own unicast and multicast addresses,
//! thousands of entries on a node with a thousand pods, for each network at each resync. With
//! an `ifinfomsg` header naming a bridge port, as `bridge fdb show dev PORT` sends it, the
//! kernel answers with that port's entries only (`rtnl_fdb_dump`): for a VXLAN port, the
//! bridge's entries on it and the VXLAN device's own, among them the flood entries.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};

use super::nlattr::{self, NLMSG_HDRLEN};

/// Kernel ABI (`linux/rtnetlink.h`, `linux/neighbour.h`, `linux/socket.h`).
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const AF_BRIDGE: u8 = 7;
/// `struct ifinfomsg`, the request's header.
const IFINFOMSG_LEN: usize = 16;
/// `struct ndmsg`, each answer's header: family at 0, `ndm_ifindex` at 4.
const NDMSG_LEN: usize = 12;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

/// The remote addresses of the flood entries (all-zeros MAC) of port `index` in the calling
/// thread's network namespace: where the port sends broadcast, multicast and unknown unicast.
pub async fn flood_entries(index: u32) -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    nlattr::dump(&request(index), |kind, body| {
        if kind == RTM_NEWNEIGH
            && let Some(dst) = flood_entry(body, index)
        {
            out.push(dst);
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

/// An RTM_GETNEIGH dump request for the AF_BRIDGE entries of port `index`.
fn request(index: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + IFINFOMSG_LEN;
    let mut b = Vec::with_capacity(len);
    // nlmsghdr: length, type, flags, sequence number, port id (the kernel's: 0).
    b.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    b.extend_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // ifinfomsg: family, padding, device type, index, flags, change mask.
    b.extend_from_slice(&[AF_BRIDGE, 0]);
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b
}

/// The remote address of one RTM_NEWNEIGH body if it is a flood entry of port `index`. The
/// port is checked here too: a kernel that ignored the filter would answer with everything.
fn flood_entry(body: &[u8], index: u32) -> Option<IpAddr> {
    if body.first() != Some(&AF_BRIDGE) || nlattr::u32_at(body, 4)? != index {
        return None;
    }
    let mut zero_mac = false;
    let mut dst = None;
    for attr in nlattr::attributes(body.get(NDMSG_LEN..)?) {
        match attr.kind {
            NDA_LLADDR => zero_mac = !attr.value.is_empty() && attr.value.iter().all(|b| *b == 0),
            // AF_BRIDGE entries do not say the family of their remote: its length does.
            NDA_DST => {
                dst = match attr.value.len() {
                    4 => <[u8; 4]>::try_from(attr.value).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(attr.value).ok().map(IpAddr::from),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    dst.filter(|_| zero_mac)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dataplane::nlattr::tests::attr;

    fn entry(index: u32, mac: &[u8], dst: &[u8]) -> Vec<u8> {
        let mut body = vec![AF_BRIDGE, 0, 0, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend(attr(NDA_LLADDR, mac));
        body.extend(attr(NDA_DST, dst));
        body
    }

    #[test]
    fn reads_the_remote_of_a_flood_entry_of_the_port_only() {
        let zero = [0u8; 6];
        assert_eq!(
            flood_entry(&entry(7, &zero, &[192, 0, 2, 2]), 7),
            Some("192.0.2.2".parse().unwrap())
        );
        let v6: std::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
        assert_eq!(
            flood_entry(&entry(7, &zero, &v6.octets()), 7),
            Some(IpAddr::V6(v6))
        );
        // Another port's, a learned MAC's, one without a remote: none.
        assert_eq!(flood_entry(&entry(8, &zero, &[192, 0, 2, 2]), 7), None);
        assert_eq!(
            flood_entry(&entry(7, &[2, 0, 0, 0, 0, 1], &[192, 0, 2, 2]), 7),
            None
        );
        let mut no_dst = vec![AF_BRIDGE, 0, 0, 0];
        no_dst.extend_from_slice(&7u32.to_ne_bytes());
        no_dst.extend_from_slice(&[0; 4]);
        no_dst.extend(attr(NDA_LLADDR, &zero));
        assert_eq!(flood_entry(&no_dst, 7), None);
    }

    #[test]
    fn truncated_or_foreign_input_is_no_entry() {
        let whole = entry(7, &[0; 6], &[192, 0, 2, 2]);
        for cut in 0..whole.len() {
            // Cut anywhere, the entry is either still whole enough or none: never a panic.
            let _ = flood_entry(&whole[..cut], 7);
        }
        let mut inet = whole.clone();
        inet[0] = 2;
        assert_eq!(flood_entry(&inet, 7), None, "an AF_INET neighbour");
        assert_eq!(flood_entry(&whole[..NDMSG_LEN], 7), None);
    }

    #[test]
    fn the_request_names_the_port_in_an_ifinfomsg() {
        let r = request(42);
        assert_eq!(r.len(), 32);
        assert_eq!(nlattr::u32_at(&r, 0), Some(32));
        assert_eq!(nlattr::u16_at(&r, 4), Some(RTM_GETNEIGH));
        assert_eq!(r[NLMSG_HDRLEN], AF_BRIDGE);
        assert_eq!(nlattr::u32_at(&r, NLMSG_HDRLEN + 4), Some(42));
    }
}
