//! Deterministic names derived from a network's name.

use sha2::{Digest, Sha256};

/// Longest Linux interface name (IFNAMSIZ minus the terminating NUL).
pub const MAX_IFNAME: usize = 15;

/// Default bridge name of a network: `bn-` and 12 hex digits of SHA-256 of the network name.
///
/// A hash rather than a truncated name, so that `custom-network-a` and `custom-network-b`
/// never share a bridge; 48 bits make an accidental collision across a cluster's networks
/// negligible, and the operator refuses the rare one (`DuplicateBridge`) rather than sharing.
pub fn default_bridge_name(network: &str) -> String {
    let digest = Sha256::digest(network.as_bytes());
    let mut name = String::with_capacity(MAX_IFNAME);
    name.push_str("bn-");
    for byte in &digest[..6] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// Whether `name` is usable as a Linux interface name we create: 1–15 bytes of
/// `[A-Za-z0-9_.-]`, starting with a letter or digit (the same rule as the CRD's).
pub fn is_valid_ifname(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_IFNAME
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The gateway MAC of a network: the same on every node (anycast gateway), locally
/// administered and unicast (`x2:` first octet bits), derived from the network name.
pub fn gateway_mac(network: &str) -> String {
    let digest = Sha256::digest(format!("bridgenet-gateway/{network}").as_bytes());
    let first = (digest[0] & 0b1111_1100) | 0b0000_0010;
    crate::Mac::new([first, digest[1], digest[2], digest[3], digest[4], digest[5]]).to_string()
}

/// A name DNS can carry as a host name (a network alias): dot-separated labels of ASCII
/// letters, digits and `-` (not first or last), 1–63 bytes each, 253 in all; a trailing dot is
/// not part of it.
pub fn is_valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_bridge_names_are_valid_and_distinct() {
        let a = default_bridge_name("custom-network-a");
        let b = default_bridge_name("custom-network-b");
        assert_ne!(a, b);
        assert!(is_valid_ifname(&a), "{a}");
        assert_eq!(a.len(), 15);
        assert_eq!(a, default_bridge_name("custom-network-a"));
    }

    #[test]
    fn ifname_rules() {
        assert!(is_valid_ifname("br-custom"));
        assert!(!is_valid_ifname(""));
        assert!(!is_valid_ifname("sixteen-bytes-xx"));
        assert!(!is_valid_ifname("."));
        assert!(!is_valid_ifname("a/b"));
        assert!(!is_valid_ifname("a b"));
    }

    #[test]
    fn gateway_mac_is_local_unicast() {
        let mac = gateway_mac("custom-network");
        let first = u8::from_str_radix(&mac[..2], 16).unwrap_or(1);
        assert_eq!(first & 1, 0, "unicast");
        assert_eq!(first & 2, 2, "locally administered");
        assert_eq!(mac, gateway_mac("custom-network"));
    }
}
