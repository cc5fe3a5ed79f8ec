//! The nftables ruleset generation over netlink, and the identity of the network namespace it
//! belongs to: together the key under which a verified check is remembered.

use super::FirewallError;

const NETLINK_HEADER_LEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LEN: usize = 4;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
/// Attribute type bits (without the nested / byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The nftables ruleset generation of the calling thread's network namespace.
///
/// The kernel bumps it on every committed nftables transaction, whoever commits (kube-proxy,
/// Docker, a user's `nft`), and it never goes back; an unchanged generation means no table,
/// ours included, has changed. One `NFT_MSG_GETGEN` request on a fresh netlink socket: the
/// netlink crates at hand speak rtnetlink, not nf_tables, and this one message is all we need.
pub fn ruleset_generation() -> Result<u32, FirewallError> {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
    let io = FirewallError::Generation;
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io)?;
    socket.bind_auto().map_err(io)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
    let mut request = Vec::with_capacity(NETLINK_HEADER_LEN + NFGENMSG_LEN);
    request.extend(((NETLINK_HEADER_LEN + NFGENMSG_LEN) as u32).to_ne_bytes());
    request.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    request.extend(NLM_F_REQUEST.to_ne_bytes());
    request.extend(1u32.to_ne_bytes()); // sequence number
    request.extend(0u32.to_ne_bytes()); // port id: the kernel's
    request.extend([0, 0, 0, 0]); // AF_UNSPEC, NFNETLINK_V0, resource id 0
    socket.send(&request, 0).map_err(io)?;
    let mut reply = Vec::with_capacity(4096);
    socket.recv(&mut reply, 0).map_err(io)?;
    parse_generation(&reply).map_err(io)
}

fn bad_reply(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The generation id in a reply to `NFT_MSG_GETGEN` (or the errno the kernel answered with).
fn parse_generation(reply: &[u8]) -> Result<u32, std::io::Error> {
    let len = ne_u32(reply, 0).ok_or_else(|| bad_reply("short netlink reply"))? as usize;
    let kind = ne_u16(reply, 4).ok_or_else(|| bad_reply("short netlink reply"))?;
    let message = reply
        .get(..len)
        .filter(|m| m.len() >= NETLINK_HEADER_LEN)
        .ok_or_else(|| bad_reply("truncated netlink reply"))?;
    if kind == NLMSG_ERROR {
        let code = ne_u32(message, NETLINK_HEADER_LEN)
            .ok_or_else(|| bad_reply("truncated netlink error"))? as i32;
        return Err(std::io::Error::from_raw_os_error(code.saturating_neg()));
    }
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return Err(bad_reply("unexpected netlink reply to GETGEN"));
    }
    let mut at = NETLINK_HEADER_LEN + NFGENMSG_LEN;
    while let (Some(attr_len), Some(attr_type)) = (ne_u16(message, at), ne_u16(message, at + 2)) {
        let attr_len = usize::from(attr_len);
        if attr_len < 4 {
            break;
        }
        if attr_type & NLA_TYPE_MASK == NFTA_GEN_ID {
            let value = message
                .get(at + 4..at + 8)
                .ok_or_else(|| bad_reply("truncated generation id"))?;
            return Ok(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
        }
        at += attr_len.next_multiple_of(4);
    }
    Err(bad_reply("no generation id in the reply"))
}

/// Identity of the calling thread's network namespace: (device, inode) of its nsfs file, so a
/// check verified in one namespace is never trusted in another (tests and benches use several).
pub(super) fn current_netns() -> Result<(u64, u64), FirewallError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/thread-self/ns/net").map_err(FirewallError::Generation)?;
    Ok((meta.dev(), meta.ino()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn generation_reply(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0u8, 0, 0x12, 0x34]; // nfgenmsg
        for (kind, value) in attrs {
            body.extend((4 + value.len() as u16).to_ne_bytes());
            body.extend(kind.to_ne_bytes());
            body.extend(*value);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut msg = Vec::new();
        msg.extend(((NETLINK_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        msg.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN).to_ne_bytes());
        msg.extend([0u8; 10]);
        msg.extend(body);
        msg
    }

    #[test]
    fn generation_reply_parsing() {
        // The id may follow other attributes (process id, name), and is big-endian.
        let reply =
            generation_reply(&[(2, &7u32.to_be_bytes()), (3, b"nft\0"), (1, &[0, 0, 1, 2])]);
        assert_eq!(parse_generation(&reply).unwrap(), 258);
        // The kernel's refusal carries its errno.
        let mut error = Vec::new();
        error.extend(36u32.to_ne_bytes());
        error.extend(NLMSG_ERROR.to_ne_bytes());
        error.extend([0u8; 10]);
        error.extend((-1i32).to_ne_bytes());
        error.extend([0u8; 16]);
        assert_eq!(
            parse_generation(&error).unwrap_err().raw_os_error(),
            Some(1)
        );
        // Malformed replies are errors, never panics.
        let without_id = generation_reply(&[(2, &7u32.to_be_bytes())]);
        assert!(parse_generation(&without_id).is_err());
        for cut in 0..reply.len() {
            let mut short = reply[..cut].to_vec();
            if cut >= 4 {
                short[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            assert!(parse_generation(&short).is_err(), "cut at {cut}");
        }
    }
}
