//! Names of `AddressClaim`s: one per (network, address), so that the API server's name
//! uniqueness is what makes a claim atomic across the cluster.

use std::net::IpAddr;

/// The claim name of `ip` on `network`: `<network>.<address>` with the address's separators as
/// dashes (`172-20-0-7`, IPv6 in full groups `fd00-0-0-0-0-0-0-7`, so never a leading dash).
/// Network names are DNS subdomains, and the address part is always the last label, so two
/// different (network, address) pairs never share a name.
pub fn claim_name(network: &str, ip: IpAddr) -> String {
    let address = match ip {
        IpAddr::V4(v4) => v4
            .octets()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
    };
    format!("{network}.{address}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_subdomains_and_distinct() {
        assert_eq!(
            claim_name("static-net", "172.41.0.77".parse().unwrap()),
            "static-net.172-41-0-77"
        );
        assert_eq!(
            claim_name("v6", "fd00::7".parse().unwrap()),
            "v6.fd00-0-0-0-0-0-0-7"
        );
        assert_eq!(
            claim_name("v6", "::1".parse().unwrap()),
            "v6.0-0-0-0-0-0-0-1"
        );
        // A dotted network name cannot be confused with another network's address.
        assert_ne!(
            claim_name("a.1-2-3-4", "10.0.0.1".parse().unwrap()),
            claim_name("a", "1.2.3.4".parse().unwrap())
        );
    }
}
