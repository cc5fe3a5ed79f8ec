//! Reading raw netlink datagrams: the messages in one, and the attributes (TLVs) in a message
//! body, without parsing what the reader does not need. Malformed input ends the iteration;
//! it never panics. And [`dump`], which sends a dump request and hands on the answer's
//! messages as they come.

use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE};

/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`: flags in an attribute's type, not part of it.
const NLA_TYPE_FLAGS: u16 = 0xc000;
/// Length of the netlink header (`struct nlmsghdr`) before every message body.
pub const NLMSG_HDRLEN: usize = 16;

/// `NLMSG_ERROR` and `NLMSG_DONE` (`linux/netlink.h`).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// Sends `request` (one whole rtnetlink dump request) on a socket of its own, in the calling
/// thread's network namespace, and passes each message of the answer to `each` (its type and
/// body) until the kernel says it is done. Errors are the socket's, the kernel's
/// (`raw_os_error` is the errno) or `each`'s.
pub async fn dump(
    request: &[u8],
    mut each: impl FnMut(u16, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let socket = TokioSocket::new(NETLINK_ROUTE)?;
    socket.send_to(request, &SocketAddr::new(0, 0)).await?;
    loop {
        let (datagram, _) = socket.recv_from_full().await?;
        for (kind, body) in messages(&datagram) {
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = i32_at(body, 0).unwrap_or(0);
                    if code != 0 {
                        return Err(std::io::Error::from_raw_os_error(-code));
                    }
                }
                _ => each(kind, body)?,
            }
        }
        if datagram.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "netlink dump ended without NLMSG_DONE",
            ));
        }
    }
}

/// The netlink messages of `datagram`: each one's type and its body (what follows the
/// netlink header).
pub fn messages(datagram: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = u32_at(datagram, at)? as usize;
        let kind = u16_at(datagram, at + 4)?;
        let message = datagram.get(at..at.checked_add(len)?)?;
        if len < NLMSG_HDRLEN {
            return None;
        }
        at += align4(len);
        Some((kind, &message[NLMSG_HDRLEN..]))
    })
}

/// One netlink attribute.
pub struct Attribute<'a> {
    /// Its type, without the nested / byte-order flags.
    pub kind: u16,
    /// The whole attribute, header and value, with its padding when the buffer has it: what
    /// to copy to re-emit it as it is.
    pub padded: &'a [u8],
    /// Its value.
    pub value: &'a [u8],
}

/// The attributes in `buf`, in order.
pub fn attributes(buf: &[u8]) -> impl Iterator<Item = Attribute<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(buf, at)?);
        let kind = u16_at(buf, at + 2)? & !NLA_TYPE_FLAGS;
        if len < 4 {
            return None;
        }
        let value = buf.get(at + 4..at + len)?;
        let end = (at + align4(len)).min(buf.len());
        let padded = &buf[at..end];
        at = end;
        Some(Attribute {
            kind,
            padded,
            value,
        })
    })
}

/// Netlink messages and attributes start on 4-byte boundaries.
pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The native-endian `u16` at `at`, if `b` holds one there.
pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The native-endian `u32` at `at`, if `b` holds one there.
pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The native-endian `i32` at `at`, if `b` holds one there.
pub fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// One attribute `kind` = `value`, padded, as the kernel writes it.
    pub(crate) fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend(u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
        a.extend(kind.to_ne_bytes());
        a.extend(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn attributes_in_order_with_flags_masked() {
        let buf = [attr(3, b"eth0\0"), attr(18 | 0x8000, &attr(1, b"veth\0"))].concat();
        let attrs: Vec<_> = attributes(&buf).collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!((attrs[0].kind, attrs[0].value), (3, &b"eth0\0"[..]));
        assert_eq!(attrs[0].padded.len(), 12);
        assert_eq!(attrs[1].kind, 18);
        let inner: Vec<_> = attributes(attrs[1].value).collect();
        assert_eq!((inner[0].kind, inner[0].value), (1, &b"veth\0"[..]));
    }

    #[test]
    fn malformed_input_ends_the_iteration() {
        // Length below the header, beyond the buffer, and a truncated header.
        assert_eq!(attributes(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(attributes(&[9, 0, 1, 0, 1]).count(), 0);
        assert_eq!(attributes(&[8, 0]).count(), 0);
        let ok = attr(1, &[1, 2, 3, 4]);
        assert_eq!(
            attributes(&[ok.clone(), vec![200, 0, 1, 0]].concat()).count(),
            1
        );
        // A last attribute without its padding is still read.
        assert_eq!(attributes(&attr(1, b"abcde")[..9]).count(), 1);
        assert_eq!(messages(&[0; 8]).count(), 0);
        let mut short = vec![0u8; 16];
        short[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(messages(&short).count(), 0);
    }
}
